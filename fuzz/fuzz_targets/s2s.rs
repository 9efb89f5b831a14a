#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stanzawall_core::fuzzing::s2s(data, std::time::Instant::now()));
