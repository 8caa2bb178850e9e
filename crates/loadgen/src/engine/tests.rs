use super::*;

#[test]
fn bodies_are_padded_to_their_size() {
    assert_eq!(body(3, 0), br#"{"intensity":3}"#);
    assert_eq!(body(3, 20), br#"{"intensity":3}"#, "too small to pad");
    for size in [25, 100, 4096] {
        let bytes = body(7, size);
        assert_eq!(bytes.len() as u64, size);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["intensity"], 7);
    }
}

#[test]
fn submit_jobs_are_bodies_padded_to_their_size() {
    let pi = Submit::MonteCarloPi {
        iterations: 1_000_000,
    };
    assert_eq!(
        pi.body(0),
        br#"{"operation":"monte_carlo_pi","data":{"iterations":1000000}}"#
    );
    let sleep = Submit::Sleep { seconds: 0.0325 };
    assert_eq!(
        sleep.body(0),
        br#"{"operation":"sleep","data":{"seconds":0.0325}}"#
    );
    // No exponent notation, whatever the size: the worker reads a plain JSON number.
    assert_eq!(
        Submit::Sleep { seconds: 0.001 }.body(0),
        br#"{"operation":"sleep","data":{"seconds":0.001}}"#
    );
    assert_eq!(
        Submit::Sleep { seconds: 120.0 }.body(0),
        br#"{"operation":"sleep","data":{"seconds":120}}"#
    );
    for size in [100, 4096] {
        let bytes = Submit::MonteCarloPi { iterations: 42 }.body(size);
        assert_eq!(bytes.len() as u64, size);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["operation"], "monte_carlo_pi");
        assert_eq!(json["data"]["iterations"], 42);
        let bytes = Submit::Sleep { seconds: 1.5 }.body(size);
        assert_eq!(bytes.len() as u64, size);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["operation"], "sleep");
        assert_eq!(json["data"]["seconds"], 1.5);
    }
}

#[test]
fn server_timing_gives_the_jobs_duration() {
    assert_eq!(server_timing_ms("job;dur=12.5"), Some(12.5));
    assert_eq!(
        server_timing_ms("db;dur=3, job;desc=\"pi\";dur=40"),
        Some(40.0)
    );
    assert_eq!(
        server_timing_ms("db;dur=3, cache"),
        Some(3.0),
        "else the first"
    );
    assert_eq!(server_timing_ms("JOB; DUR = 7"), Some(7.0));
    assert_eq!(server_timing_ms("job;dur=\"8\""), Some(8.0));
    for none in [
        "",
        "job",
        "job;dur=",
        "job;dur=-1",
        "job;dur=NaN",
        "job;dur=x",
    ] {
        assert_eq!(server_timing_ms(none), None, "{none:?}");
    }
}

#[test]
fn errors_read_on_one_short_line() {
    let long = "x".repeat(500) + "\nmore";
    let text = truncate(long);
    assert!(text.chars().count() <= 201);
    assert!(!text.contains('\n'));
}
