use std::path::PathBuf;

use super::*;

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stanzawall-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn regular_files_are_read() {
    let dir = scratch("regular");
    let f = dir.join("list.txt");
    std::fs::write(&f, "a\nb\n").unwrap();
    assert_eq!(read_to_string(&f).unwrap(), "a\nb\n");
    // Through a symlink too: what counts is what it points at.
    std::os::unix::fs::symlink(&f, dir.join("link")).unwrap();
    assert_eq!(read_to_string(&dir.join("link")).unwrap(), "a\nb\n");
    std::fs::write(&f, b"\xff\xfe").unwrap();
    assert_eq!(read_to_string(&f).unwrap_err().to_string(), "is not valid UTF-8");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn fifos_devices_and_directories_are_refused_without_blocking() {
    let dir = scratch("special");
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Reading a FIFO with no writer blocks in open(2); this must return at once instead (run
    // under a deadline so a regression fails rather than hangs the suite).
    let e = with_deadline(Duration::from_secs(20), move || read(&fifo)).unwrap().unwrap_err();
    assert_eq!(e.to_string(), "is not a regular file (a FIFO)");
    assert_eq!(read(Path::new("/dev/zero")).unwrap_err().to_string(), "is not a regular file (a character device)");
    assert_eq!(read(&dir).unwrap_err().to_string(), "is not a regular file (a directory)");
    assert_eq!(read(&dir.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn huge_files_are_refused_before_a_byte_is_read() {
    let dir = scratch("huge");
    let f = dir.join("huge.txt");
    // Sparse: 10 GiB of size, no disk used.
    File::create(&f).unwrap().set_len(10 << 30).unwrap();
    let e = read(&f).unwrap_err();
    assert_eq!(e.to_string(), "is 10737418240 bytes; a file the configuration names may have at most 64 MiB");
    File::create(&f).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
    assert!(read(&f).is_err());
    File::create(&f).unwrap().set_len(MAX_FILE_BYTES).unwrap();
    assert_eq!(read(&f).unwrap().len() as u64, MAX_FILE_BYTES, "exactly the cap is fine");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_stuck_job_is_given_up_at_the_deadline() {
    // A job that never finishes (a read stuck in the kernel stands in as a thread parked on a
    // channel nobody sends to).
    let (_keep, rx) = std::sync::mpsc::channel::<()>();
    let stuck = move || {
        let _ = rx.recv();
    };
    assert!(matches!(with_deadline(Duration::from_millis(50), stuck), Err(OffLoopError::TimedOut(_))));
    assert_eq!(with_deadline(Duration::from_secs(20), || 7).unwrap(), 7);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_keep2, rx2) = std::sync::mpsc::channel::<()>();
    let stuck = move || {
        let _ = rx2.recv();
    };
    runtime.block_on(async {
        assert!(matches!(off_loop(Duration::from_millis(50), stuck).await, Err(OffLoopError::TimedOut(_))));
        assert_eq!(off_loop(Duration::from_secs(20), || 8).await.unwrap(), 8);
        #[allow(clippy::panic)]
        let panics = || -> u8 { panic!("job fails") };
        assert!(matches!(off_loop(Duration::from_secs(20), panics).await, Err(OffLoopError::Panicked)));
    });
    // Dropping the runtime does not wait for the stuck thread (the test would hang if it did).
    drop(runtime);
}
