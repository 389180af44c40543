#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ncps_fuzz::keys(data));
