//! The rule matcher: any glob or regex either compiles or is refused with a
//! message, and matching any name never panics.
#![no_main]

use casafs::rules::{Kind, Rule, glob_to_regex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == 0);
    let (Some(pat), Some(name)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(pat) = std::str::from_utf8(pat) else {
        return;
    };
    let _ = glob_to_regex(pat);
    for is_regex in [false, true] {
        if let Ok(r) = Rule::new("fuzz", pat, is_regex, Kind::Any, "/t".into(), None) {
            let _ = r.matches_name(name);
        }
    }
});
