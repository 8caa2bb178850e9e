use super::*;

fn query(tail: usize, since_ms: Option<u64>) -> LogQuery {
    LogQuery {
        tail,
        since_ms,
        follow: true,
    }
}

#[test]
fn the_ring_is_bounded_in_lines_and_bytes_and_cuts_long_lines() {
    let mut logs = Logs::default();
    logs.open(7);
    for n in 0..LOG_RING_LINES + 10 {
        logs.push(7, "stderr", &format!("line {n}\n"));
    }
    let (kept, live) = logs.processes[&7].read(&query(LOG_RING_LINES * 2, None));
    assert_eq!(kept.len(), LOG_RING_LINES);
    assert_eq!(kept[0].line, "line 10");
    assert!(live.is_some());

    logs.push(7, "stdout", &"x".repeat(super::super::LOG_BYTES * 3));
    let (kept, _) = logs.processes[&7].read(&query(1, None));
    assert_eq!(kept[0].line.len(), super::super::LOG_BYTES);
    assert_eq!(kept[0].stream, "stdout");

    let mut logs = Logs::default();
    logs.open(8);
    let big = "y".repeat(super::super::LOG_BYTES);
    for _ in 0..2 * LOG_RING_BYTES / super::super::LOG_BYTES {
        logs.push(8, "stderr", &big);
    }
    let log = &logs.processes[&8];
    assert!(log.bytes <= LOG_RING_BYTES, "{}", log.bytes);
    assert_eq!(log.lines.len(), LOG_RING_BYTES / super::super::LOG_BYTES);
}

#[test]
fn tail_since_and_the_end_of_the_output() {
    let mut logs = Logs::default();
    logs.open(9);
    for n in 0..5 {
        logs.push(9, "stderr", &format!("{n}"));
    }
    let (kept, _) = logs.processes[&9].read(&query(2, None));
    let texts: Vec<&str> = kept.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(texts, ["3", "4"]);
    let (kept, _) = logs.processes[&9].read(&query(0, None));
    assert!(kept.is_empty());
    let (kept, _) = logs.processes[&9].read(&query(10, Some(u64::MAX)));
    assert!(kept.is_empty(), "nothing after the end of time");

    let (_, live) = logs.processes[&9].read(&query(0, None));
    let mut live = live.unwrap();
    logs.push(9, "stdout", "new");
    assert_eq!(live.try_recv().unwrap().line, "new");
    logs.pipe_closed(9);
    assert!(logs.processes[&9].live.is_some(), "one pipe still open");
    logs.pipe_closed(9);
    assert!(logs.processes[&9].read(&query(1, None)).1.is_none());
    assert!(matches!(
        live.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Closed)
    ));
}

#[test]
fn at_most_logs_kept_processes_the_oldest_forgotten() {
    let mut logs = Logs::default();
    // Pids out of order: the oldest started goes, not the lowest pid.
    for pid in (0..LOGS_KEPT as u32).map(|n| 1000 - n) {
        logs.open(pid);
    }
    logs.open(5);
    assert_eq!(logs.processes.len(), LOGS_KEPT);
    assert!(!logs.processes.contains_key(&1000));
    assert!(logs.processes.contains_key(&5));
}
