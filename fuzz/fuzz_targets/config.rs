//! The mount options and the TOML config file: any input gives settings or
//! a one-line error, never a panic. First line: `-o` options; the rest: the
//! config file.
#![no_main]

use casafs::config::{MountArgs, build_from_text, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (opts, file) = text.split_once('\n').unwrap_or((text, ""));
    let args = MountArgs {
        source: "/src".into(),
        mountpoint: "/src".into(),
        options: vec![opts.to_string()],
        config: None,
        foreground: true,
    };
    match build_from_text(&args, file) {
        Ok(s) => {
            let _ = render(&s);
        }
        Err(e) => assert!(!e.0.contains('\n'), "multi-line error: {e:?}"),
    }
});
