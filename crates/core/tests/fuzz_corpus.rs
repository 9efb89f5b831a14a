//! Replays every fuzz corpus entry (fuzz/corpus/<target>/*) through the same entry point the fuzz
//! target calls, so a crash found once stays fixed (rustls `test_read_fuzz_corpus` style).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use stanzawall_core::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus in {}", dir.display());
}

#[test]
fn xml_stanzas_corpus() {
    replay("xml_stanzas", fuzzing::xml_stanzas);
}

#[test]
fn xml_stream_corpus() {
    replay("xml_stream", fuzzing::xml_stream);
}

#[test]
fn s2s_corpus() {
    replay("s2s", |data| fuzzing::s2s(data, std::time::Instant::now()));
}

#[test]
fn session_corpus() {
    replay("session", |data| fuzzing::session(data, std::time::Instant::now()));
}

#[test]
fn jid_corpus() {
    replay("jid", fuzzing::jid);
}

#[test]
fn config_corpus() {
    replay("config", fuzzing::config);
}

#[test]
fn websocket_corpus() {
    replay("websocket", |data| fuzzing::websocket(data, std::time::Instant::now()));
}
