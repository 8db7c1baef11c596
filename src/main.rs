fn main() {
    casafs::logsink::init();
    std::process::exit(casafs::cli::main());
}
