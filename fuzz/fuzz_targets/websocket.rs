#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stanzawall_core::fuzzing::websocket(data, std::time::Instant::now()));
