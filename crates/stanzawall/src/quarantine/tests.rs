//! The embedded store and the release path over the real session table.

use std::sync::atomic::{AtomicUsize, Ordering};

use stanzawall_core::session::StanzaSummary;

use super::embedded::Embedded;
use super::*;

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("stanzawall-q-{name}-{}-{}", std::process::id(), new_id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bounds(entries: usize, bytes: u64, path: &std::path::Path) -> QuarantineConfig {
    QuarantineConfig { max_entries: entries, max_bytes: bytes, retention: Duration::from_secs(3600), path: path.into() }
}

fn held(chain: Chain, from: &str, to: &str, body: &str) -> Held {
    let xml = format!("<message from='{from}' to='{to}' type='chat'><body>{body}</body></message>");
    let stanza = parse_stanzas(&xml, XmlLimits::default()).unwrap().remove(0);
    let user = stanzawall_core::jid::parse_full(if chain == Chain::C2sIn { from } else { to }).unwrap();
    let summary = StanzaSummary::of(&stanza, Some(&user)).unwrap();
    Held { chain, rule: Some("hold".into()), stanza, summary }
}

fn entry(body: &str) -> Entry {
    Entry::of_held(&held(Chain::C2sOut, "mallory@spam.test/x", "bob@example.test/laptop", body), "c2s", 7)
}

#[test]
fn entries_round_trip_and_survive_reopening() {
    let d = dir("roundtrip");
    let path = d.join("quarantine.redb");
    let b = bounds(10, 1 << 20, &path);
    let (first, second) = (entry("one"), entry("two"));
    {
        let store = Embedded::open(&path).unwrap();
        store.hold(&first, &b).unwrap();
        store.hold(&second, &b).unwrap();
        assert_eq!(store.get(&first.id).unwrap().as_ref(), Some(&first));
        assert_eq!(store.stats().unwrap(), (2, first.bytes + second.bytes));
    }
    // A restart: the same file, every committed entry there, in the order held.
    let store = Embedded::open(&path).unwrap();
    let listed = store.list(100).unwrap();
    assert_eq!(listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>().len(), 2);
    assert!(listed.contains(&first) && listed.contains(&second));
    assert_eq!(first.kind, "message");
    assert_eq!(first.stanza.as_deref().map(|s| s.contains("<body>one</body>")), Some(true));
    // Claimed once; a second claim is refused with who has it; finished, it leaves the index.
    let claimed = store.claim(&first.id, "ops", 5).unwrap();
    assert_eq!((claimed.state, claimed.released_by.as_deref()), (State::Releasing, Some("ops")));
    match store.claim(&first.id, "other", 6) {
        Err(QuarantineError::NotHeld { state: "releasing", by, .. }) => assert_eq!(by, "ops"),
        other => panic!("{other:?}"),
    }
    store.finish(&first.id).unwrap();
    assert_eq!(store.get(&first.id).unwrap().unwrap().state, State::Released);
    assert_eq!(store.stats().unwrap(), (1, second.bytes));
    assert!(matches!(store.claim(&first.id, "x", 7), Err(QuarantineError::NotHeld { state: "released", .. })));
    // Deleted: gone in any state.
    assert_eq!(store.delete(&second.id).unwrap().id, second.id);
    assert!(matches!(store.delete(&second.id), Err(QuarantineError::NotFound(_))));
    assert_eq!(store.stats().unwrap(), (0, 0));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bounds_refuse_what_does_not_fit_and_expiry_frees_it() {
    let d = dir("bounds");
    let path = d.join("q.redb");
    let store = Embedded::open(&path).unwrap();
    let two = bounds(2, 1 << 20, &path);
    let mut entries: Vec<Entry> = (0..3).map(|i| entry(&format!("m{i}"))).collect();
    entries[0].time_ms = 1_000;
    entries[1].time_ms = 2_000;
    store.hold(&entries[0], &two).unwrap();
    store.hold(&entries[1], &two).unwrap();
    assert_eq!(store.hold(&entries[2], &two), Err(QuarantineError::FullEntries(2)));
    let small = bounds(100, entries[0].bytes * 2 + 1, &path);
    assert_eq!(store.hold(&entries[2], &small), Err(QuarantineError::FullBytes(entries[0].bytes * 2 + 1)));
    // A released record no longer counts; expiry removes the held one past the cutoff.
    store.claim(&entries[1].id, "ops", 3).unwrap();
    store.finish(&entries[1].id).unwrap();
    store.hold(&entries[2], &two).unwrap();
    let gone = store.expire(1_500).unwrap();
    assert_eq!(gone.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![entries[0].id.clone()]);
    assert!(store.get(&entries[0].id).unwrap().is_none());
    // The released record (held at 2,000) goes at a later cutoff, silently.
    assert!(store.expire(2_500).unwrap().is_empty());
    assert!(store.get(&entries[1].id).unwrap().is_none());
    assert_eq!(store.stats().unwrap(), (1, entries[2].bytes));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn concurrent_claims_on_one_entry_give_it_to_exactly_one() {
    let d = dir("claims");
    let path = d.join("q.redb");
    let store = Arc::new(Embedded::open(&path).unwrap());
    let e = entry("race");
    store.hold(&e, &bounds(10, 1 << 20, &path)).unwrap();
    let wins = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (store, wins, id) = (store.clone(), wins.clone(), e.id.clone());
            std::thread::spawn(move || {
                if store.claim(&id, &format!("op{i}"), 1).is_ok() {
                    wins.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(wins.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(d);
}

/// A session in the real table whose engine side counts the stanzas it is handed.
fn serve_session(
    sessions: &Arc<Sessions>,
    jid: &str,
) -> (crate::sessions::Registration, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (reg, _kicks, mut deliveries) = sessions.register("c2s", "c2s", "127.0.0.1:4000".parse().unwrap());
    reg.set_jid(jid);
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let task = tokio::spawn(async move {
        while let Some(d) = deliveries.recv().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = d.reply.send(Ok(()));
        }
    });
    (reg, count, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_delivers_once_even_when_asked_many_times_at_once() {
    let d = dir("release");
    let path = d.join("q.redb");
    let sessions = Arc::new(Sessions::default());
    let store: Arc<dyn QuarantineStore> = Arc::new(Embedded::open(&path).unwrap());
    let q =
        Arc::new(Quarantine::new(store, bounds(10, 1 << 20, &path), Arc::new(Metrics::default()), sessions.clone()));
    let e = entry("once");
    let id = e.id.clone();
    q.hold(e).await.unwrap();
    // Nobody to take it (the recipient has no session): a clear error, and it stays held.
    match q.release(&id, "ops").await {
        Err(ReleaseError::Deliver(DeliverError::SessionGone(why))) => {
            assert!(why.contains("no open session of bob@example.test"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(q.get(&id).await.unwrap().state, State::Held);
    // The recipient logs in (another session than the one it was held for): eight releases at
    // once deliver exactly one copy; the others are told it is being or was released.
    let (_reg, delivered, _task) = serve_session(&sessions, "bob@example.test/phone");
    let _other = serve_session(&sessions, "carol@example.test/x");
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let (q, id) = (q.clone(), id.clone());
            tokio::spawn(async move { q.release(&id, &format!("op{i}")).await })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => {
                ok += 1;
                assert!(r.via.starts_with("session "), "{}", r.via);
            }
            Err(ReleaseError::Store(QuarantineError::NotHeld { .. })) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((ok, delivered.load(Ordering::SeqCst)), (1, 1));
    let after = q.get(&id).await.unwrap();
    assert_eq!(after.state, State::Released);
    assert!(matches!(
        q.release(&id, "late").await,
        Err(ReleaseError::Store(QuarantineError::NotHeld { state: "released", .. }))
    ));
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn release_targets_follow_the_direction() {
    let out = entry("x");
    assert_eq!(account(&out, Chain::C2sOut).as_deref(), Some("bob@example.test"));
    let inn = Entry::of_held(&held(Chain::C2sIn, "alice@example.test/phone", "bob@example.test", "y"), "c2s", 1);
    assert_eq!(account(&inn, Chain::C2sIn).as_deref(), Some("alice@example.test"));
    assert!(valid_id(&inn.id));
    assert!(!valid_id("../../etc") && !valid_id("ABCDEF0123456789"));
}
