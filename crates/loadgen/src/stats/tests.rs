use super::*;

fn record(id: u64, backend: &str, latency_ms: f64, status: u16) -> RequestRecord {
    RequestRecord {
        id,
        path: "/work".into(),
        intensity: 1,
        due_s: id as f64 * 0.1,
        unix_ms: 1_000_000 + id * 100,
        lateness_ms: id as f64 / 10.0,
        latency_ms,
        status,
        backend: backend.into(),
        error: if status == 200 {
            String::new()
        } else {
            format!("status {status}")
        },
        service_ms: None,
    }
}

#[test]
fn percentiles_are_nearest_rank() {
    let values: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(percentile(&values, 50.0), 5.0);
    assert_eq!(percentile(&values, 90.0), 9.0);
    assert_eq!(percentile(&values, 99.0), 10.0);
    assert_eq!(percentile(&[], 50.0), 0.0);
}

#[test]
fn summary_groups_by_worker_and_counts_errors() {
    // a: latencies 10..=40 and one 503; b: 5 and 7; one transport error with no worker.
    let mut records = vec![
        record(0, "a", 10.0, 200),
        record(1, "b", 5.0, 200),
        record(2, "a", 20.0, 200),
        record(3, "a", 30.0, 200),
        record(4, "b", 7.0, 200),
        record(5, "a", 40.0, 200),
        record(6, "a", 1.0, 503),
    ];
    let mut lost = record(7, "", 2000.0, 0);
    lost.error = "timed out".into();
    records.push(lost);

    let summary = Summary::of(&records);
    assert_eq!(summary.requests, 8);
    assert_eq!(summary.ok, 6);
    assert_eq!(summary.errors, 2);
    let a = &summary.workers["a"];
    assert_eq!((a.requests, a.errors), (5, 1));
    assert_eq!(
        (a.p50_ms, a.p90_ms, a.p99_ms, a.max_ms),
        (20.0, 40.0, 40.0, 40.0)
    );
    assert_eq!(a.mean_ms, 25.0);
    let b = &summary.workers["b"];
    assert_eq!((b.requests, b.errors, b.p50_ms, b.max_ms), (2, 0, 5.0, 7.0));
    let unknown = &summary.workers[UNKNOWN_BACKEND];
    assert_eq!((unknown.requests, unknown.errors), (1, 1));
    assert!(!unknown.has_latencies());
    // Overall over the six successes: 5, 7, 10, 20, 30, 40.
    assert_eq!(summary.overall.p50_ms, 10.0);
    assert_eq!(summary.overall.p99_ms, 40.0);
    // From due 0.0 to the last completion: record 7 due at 0.7 s + 2 s.
    assert!((summary.duration_s - 2.7).abs() < 1e-9);
    assert!((summary.throughput_rps - 6.0 / 2.7).abs() < 1e-9);
    assert_eq!(summary.lateness_p50_ms, 0.3);

    let text = summary.to_string();
    assert!(text.contains("8 requests"), "{text}");
    let a_line = text.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(
        a_line.contains("20.0") && a_line.contains("40.0"),
        "{a_line}"
    );
    let unknown_line = text
        .lines()
        .find(|l| l.starts_with(UNKNOWN_BACKEND))
        .unwrap();
    assert!(unknown_line.ends_with('-'), "{unknown_line}");
}

#[test]
fn slowdown_is_the_response_time_over_the_jobs_run_time() {
    // Run times 10, 5, 20 ms answered in 20, 50, 20 ms: slowdowns 2, 10, 1. A failure and an
    // answer without a run time do not count.
    let timed = |id, latency, service: Option<f64>, status| RequestRecord {
        service_ms: service,
        ..record(id, "a", latency, status)
    };
    let records = [
        timed(0, 20.0, Some(10.0), 200),
        timed(1, 50.0, Some(5.0), 200),
        timed(2, 20.0, Some(20.0), 200),
        timed(3, 90.0, Some(1.0), 503),
        timed(4, 70.0, None, 200),
        timed(5, 70.0, Some(0.0), 200),
    ];
    let slowdown = SlowdownStats::of(&records).unwrap();
    assert_eq!(slowdown.requests, 3);
    assert!((slowdown.mean - 13.0 / 3.0).abs() < 1e-9);
    assert!((slowdown.service_mean_ms - 35.0 / 3.0).abs() < 1e-9);
    assert_eq!((slowdown.p50, slowdown.p99), (2.0, 10.0));
    let summary = Summary::of(&records);
    assert_eq!(summary.slowdown, Some(slowdown));
    assert!(summary.to_string().contains("mean 4.33"), "{summary}");
    assert_eq!(SlowdownStats::of(&[record(0, "a", 1.0, 200)]), None);

    let report = Report::new(
        &[
            ("timed".to_owned(), records.to_vec()),
            ("untimed".to_owned(), vec![record(0, "a", 1.0, 200)]),
        ],
        None,
    );
    assert_eq!(report.rows[0].slowdown_p99, Some(10.0));
    assert_eq!(report.rows[1].slowdown_mean, None);
    let tsv = report.to_tsv();
    let lines: Vec<&str> = tsv.lines().collect();
    assert!(lines[0].ends_with("\tservice_mean_ms\tslowdown_p50\tslowdown_p99\tslowdown_mean"));
    assert!(
        lines[1].ends_with("\t\t11.667\t2.000\t10.000\t4.333"),
        "{tsv}"
    );
    assert!(lines[2].ends_with("\t\t\t\t\t"), "{tsv}");
    let table = report.to_string();
    assert!(
        table.lines().next().unwrap().ends_with("mean slowdown"),
        "{table}"
    );
    assert!(table.lines().nth(1).unwrap().ends_with("4.33"), "{table}");
    assert!(table.lines().nth(2).unwrap().ends_with('-'), "{table}");
}

#[test]
fn report_compares_p99_with_the_baseline() {
    let runs = vec![
        (
            "round-robin".to_owned(),
            vec![record(0, "a", 10.0, 200), record(1, "a", 40.0, 200)],
        ),
        (
            "p2c-ewma".to_owned(),
            vec![record(0, "a", 10.0, 200), record(1, "a", 20.0, 200)],
        ),
    ];
    let report = Report::new(&runs, Some("round-robin"));
    assert_eq!(report.rows[0].p99_vs_baseline, Some(1.0));
    assert_eq!(report.rows[1].p99_vs_baseline, Some(0.5));
    let table = report.to_string();
    assert!(table.contains("p99 vs round-robin"), "{table}");
    assert!(
        !table.contains("slowdown"),
        "no run times, no slowdown column"
    );
    assert!(table.contains("0.50x"), "{table}");
    let tsv = report.to_tsv();
    assert!(
        tsv.lines().nth(2).unwrap().starts_with("p2c-ewma\t2\t0\t"),
        "{tsv}"
    );
}
