use super::*;

fn rows(arrivals: &[f64]) -> Vec<Arrival> {
    arrivals
        .iter()
        .enumerate()
        .map(|(id, &arrival_s)| Arrival {
            id: id as u64,
            arrival_s,
            service_s: None,
        })
        .collect()
}

fn close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{actual} is not {expected}"
    );
}

/// The M/D/1-style example of the README, by hand: one server, ST = 2 s, arrivals at 0, 1,
/// 1.5 and 7 s. Request 0 is served at once (0-2); request 1 waits 1 s (2-4); request 2
/// waits 2.5 s (4-6); the server idles from 6 to 7, so request 3 is served at once (7-9).
#[test]
fn deterministic_service_matches_the_hand_computed_example() {
    let params = Params {
        st: Some(2.0),
        delay: 0.0,
    };
    let sim = simulate(&rows(&[0.0, 1.0, 1.5, 7.0]), &params);
    let starts: Vec<f64> = sim.results.iter().map(|r| r.start_s).collect();
    let waits: Vec<f64> = sim.results.iter().map(|r| r.wait_s).collect();
    let responses: Vec<f64> = sim.results.iter().map(|r| r.response_s).collect();
    assert_eq!(starts, [0.0, 2.0, 4.0, 7.0]);
    assert_eq!(waits, [0.0, 1.0, 2.5, 0.0]);
    assert_eq!(responses, [2.0, 3.0, 4.5, 2.0]);
    assert_eq!(sim.results[3].departure_s, 9.0);

    let summary = &sim.summary;
    assert_eq!(summary.requests, 4);
    close(summary.mean_wait_s, 0.875);
    // Nearest rank over [0, 0, 1, 2.5]: p50 is the 2nd value, p99 the 4th.
    close(summary.p50_wait_s, 0.0);
    close(summary.p99_wait_s, 2.5);
    close(summary.max_wait_s, 2.5);
    close(summary.mean_response_s, 2.875);
    close(summary.p50_response_s, 2.0);
    close(summary.p99_response_s, 4.5);
    close(summary.busy_s, 8.0);
    close(summary.span_s, 9.0);
    close(summary.utilisation, 8.0 / 9.0);
}

#[test]
fn delay_shifts_entry_and_adds_to_the_response() {
    let params = Params {
        st: Some(2.0),
        delay: 0.5,
    };
    let sim = simulate(&rows(&[0.0, 1.0, 1.5, 7.0]), &params);
    let waits: Vec<f64> = sim.results.iter().map(|r| r.wait_s).collect();
    let responses: Vec<f64> = sim.results.iter().map(|r| r.response_s).collect();
    assert_eq!(
        waits,
        [0.0, 1.0, 2.5, 0.0],
        "every entry moves by the same delay"
    );
    assert_eq!(responses, [2.5, 3.5, 5.0, 2.5]);
    close(sim.summary.span_s, 9.0);
}

#[test]
fn per_row_service_demand_wins_over_st() {
    let arrivals = vec![
        Arrival {
            id: 10,
            arrival_s: 0.0,
            service_s: Some(1.0),
        },
        Arrival {
            id: 11,
            arrival_s: 0.0,
            service_s: None,
        },
        Arrival {
            id: 12,
            arrival_s: 0.5,
            service_s: Some(0.25),
        },
    ];
    let sim = simulate(
        &arrivals,
        &Params {
            st: Some(2.0),
            delay: 0.0,
        },
    );
    let services: Vec<f64> = sim.results.iter().map(|r| r.service_s).collect();
    let waits: Vec<f64> = sim.results.iter().map(|r| r.wait_s).collect();
    assert_eq!(services, [1.0, 2.0, 0.25]);
    assert_eq!(waits, [0.0, 1.0, 2.5]);
    assert_eq!(sim.results[2].id, 12);
    close(sim.summary.utilisation, 1.0);
}

#[test]
fn an_empty_trace_gives_a_zero_summary() {
    let sim = simulate(&[], &Params::default());
    assert_eq!(sim.summary.requests, 0);
    assert_eq!(sim.summary.utilisation, 0.0);
    assert_eq!(sim.summary.p99_wait_s, 0.0);
}

#[test]
fn parses_rows_and_parameters() {
    let body = br#"{"st": 2, "delay": 0.5, "rows": [
        {"id": 7, "arrival_s": 0},
        {"arrival_s": 1.5, "service_s": 0.25},
        {"arrival_s": 1.5, "service_s": null}
    ]}"#;
    let (arrivals, params) = parse_request(body, MAX_ROWS).unwrap();
    assert_eq!(
        params,
        Params {
            st: Some(2.0),
            delay: 0.5
        }
    );
    assert_eq!(arrivals.len(), 3);
    assert_eq!(arrivals[0].id, 7);
    assert_eq!(arrivals[1].id, 1, "a missing id is the row index");
    assert_eq!(arrivals[1].service_s, Some(0.25));
    assert_eq!(arrivals[2].service_s, None);
}

#[test]
fn malformed_rows_are_refused_naming_the_row() {
    for (body, expected) in [
        (
            r#"{"st": 1, "rows": [{"arrival_s": 0}, {"arrival_s": "soon"}]}"#,
            "rows[1].arrival_s",
        ),
        (
            r#"{"st": 1, "rows": [{"arrival_s": 0}, {"arrival_s": -1}]}"#,
            "rows[1].arrival_s",
        ),
        (
            r#"{"st": 1, "rows": [{"arrival_s": 2}, {"arrival_s": 1}]}"#,
            "rows[1].arrival_s 1 is earlier",
        ),
        (
            r#"{"st": 1, "rows": [{"arrival_s": 0}, {"service_s": 1}]}"#,
            "rows[1] has no `arrival_s`",
        ),
        (
            r#"{"rows": [{"arrival_s": 0, "service_s": 1}, {"arrival_s": 1}]}"#,
            "rows[1] has no `service_s`",
        ),
        (
            r#"{"st": 1, "rows": [{"arrival_s": 0, "service_s": "x"}]}"#,
            "rows[0].service_s",
        ),
        (
            r#"{"st": 1, "rows": [{"arrival_s": 0, "id": -3}]}"#,
            "rows[0].id",
        ),
        (r#"{"st": 1, "rows": [3]}"#, "rows[0] must be an object"),
        (r#"{"st": -1, "rows": []}"#, "`st`"),
        (r#"{"st": 1, "delay": "x", "rows": []}"#, "`delay`"),
        (r#"{"st": 1}"#, "missing field `rows`"),
        (r#"{"st": 1, "rows": {}}"#, "`rows` must be an array"),
        (r#"[1, 2]"#, "JSON object"),
        (r#"{"rows": "#, "malformed JSON"),
    ] {
        match parse_request(body.as_bytes(), MAX_ROWS) {
            Err(SimulateError::Invalid(message)) => {
                assert!(message.contains(expected), "{body}: {message}");
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn too_many_rows_are_refused() {
    let body = r#"{"st": 1, "rows": [{"arrival_s": 0}, {"arrival_s": 1}, {"arrival_s": 2}]}"#;
    assert_eq!(
        parse_request(body.as_bytes(), 2),
        Err(SimulateError::TooManyRows { rows: 3, max: 2 })
    );
}

#[test]
fn nearest_rank_percentiles() {
    let values: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&values, 50.0), 50.0);
    assert_eq!(percentile(&values, 99.0), 99.0);
    assert_eq!(percentile(&values, 100.0), 100.0);
    assert_eq!(percentile(&values, 0.0), 1.0);
    assert_eq!(percentile(&[3.0], 99.0), 3.0);
}
