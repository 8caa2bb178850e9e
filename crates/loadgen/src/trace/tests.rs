use super::*;
use crate::dist::Shape;

fn config() -> GenerateConfig {
    GenerateConfig {
        samples: 20_000,
        arrivals: Dist::new(Shape::Exponential, 0.01, 0.0).unwrap(),
        service: Dist::new(Shape::Lognormal, 0.05, 0.02).unwrap(),
        size: Dist::new(Shape::Uniform, 1000.0, 200.0).unwrap(),
        read_ratio: 0.3,
        concurrency: 1,
        seed: 42,
        intensity_unit_s: 0.01,
        max_intensity: 10,
    }
}

fn gaps(rows: &[TraceRow]) -> Vec<f64> {
    let mut previous = 0.0;
    rows.iter()
        .map(|row| {
            let gap = row.arrival_s - previous;
            previous = row.arrival_s;
            gap
        })
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn generated_trace_follows_its_parameters() {
    let rows = generate(&config()).unwrap();
    assert_eq!(rows.len(), 20_000);
    assert!(rows.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
    assert!(rows.iter().enumerate().all(|(i, r)| r.id == i as u64));

    let gap = mean(&gaps(&rows));
    assert!((gap - 0.01).abs() < 0.0003, "mean gap {gap}");

    let light = rows.iter().filter(|r| r.kind == Kind::Light).count() as f64 / 20_000.0;
    assert!((light - 0.3).abs() < 0.015, "light share {light}");

    let work: Vec<f64> = rows
        .iter()
        .filter(|r| r.kind == Kind::Work)
        .filter_map(|r| r.service_s)
        .collect();
    let demand = mean(&work);
    assert!((demand - 0.05).abs() < 0.0015, "mean work demand {demand}");

    let sizes: Vec<f64> = rows.iter().map(|r| r.size_bytes as f64).collect();
    let size = mean(&sizes);
    assert!((size - 1000.0).abs() < 10.0, "mean size {size}");

    for row in &rows {
        assert!((1..=10).contains(&row.intensity), "{row:?}");
        if row.kind == Kind::Work {
            let expected = (row.service_s.unwrap() / 0.01).round().clamp(1.0, 10.0) as u32;
            assert_eq!(row.intensity, expected, "{row:?}");
        }
    }
}

#[test]
fn merged_clients_keep_the_mean_gap() {
    let rows = generate(&GenerateConfig {
        concurrency: 8,
        arrivals: Dist::new(Shape::Constant, 0.01, 0.0).unwrap(),
        samples: 8000,
        ..config()
    })
    .unwrap();
    let gap = mean(&gaps(&rows));
    assert!((gap - 0.01).abs() < 0.0002, "mean gap {gap}");
    // Constant gaps of staggered clients interleave evenly.
    assert!((rows[100].arrival_s - rows[99].arrival_s - 0.01).abs() < 1e-6);
}

#[test]
fn same_seed_same_trace_and_other_seed_other_trace() {
    let render = |config: &GenerateConfig| {
        let mut bytes = Vec::new();
        write(&mut bytes, &generate(config).unwrap()).unwrap();
        bytes
    };
    let small = GenerateConfig {
        samples: 500,
        ..config()
    };
    assert_eq!(render(&small), render(&small));
    assert_ne!(
        render(&small),
        render(&GenerateConfig {
            seed: 43,
            ..small.clone()
        })
    );
}

#[test]
fn written_traces_read_back_equal() {
    let rows = generate(&GenerateConfig {
        samples: 300,
        ..config()
    })
    .unwrap();
    let mut bytes = Vec::new();
    write(&mut bytes, &rows).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.starts_with("id,arrival_s,kind,intensity,service_s,size_bytes\n"));
    let read = parse(bytes.as_slice(), Path::new("t.csv")).unwrap();
    assert_eq!(read, rows);
}

#[test]
fn minimal_traces_take_defaults() {
    let text = "arrival_s,service_s\n0,0.5\n1.5,\n2,0.25\n";
    let rows = parse(text.as_bytes(), Path::new("t.csv")).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].id, 1);
    assert_eq!(rows[1].kind, Kind::Work);
    assert_eq!(rows[1].intensity, 1);
    assert_eq!(rows[1].service_s, None);
    assert_eq!(rows[2].service_s, Some(0.25));
}

#[test]
fn malformed_rows_name_their_line() {
    let header = "id,arrival_s,kind,intensity,service_s,size_bytes\n";
    for (body, line, expected) in [
        (
            "0,0.0,work,1,0.1,10\n1,abc,work,1,0.1,10\n",
            3,
            "`arrival_s` must be",
        ),
        (
            "0,0.0,work,1,0.1,10\n1,0.1,work,1,0.1,10\n2,0.2,cook,1,0.1,10\n",
            4,
            "kind `cook`",
        ),
        ("0,0.0,work,0,0.1,10\n", 2, "`intensity`"),
        (
            "0,0.5,work,1,0.1,10\n1,0.2,work,1,0.1,10\n",
            3,
            "earlier than",
        ),
        ("0,0.0,work,1\n", 2, "4 fields, but the header has 6"),
        ("0,-1,work,1,0.1,10\n", 2, "non-negative"),
        ("0,0.0,work,1,0.1,big\n", 2, "`size_bytes`"),
        ("0,,work,1,0.1,10\n", 2, "`arrival_s` is empty"),
    ] {
        let text = format!("{header}{body}");
        let err = parse(text.as_bytes(), Path::new("bad.csv")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("bad.csv line {line}: ")) && message.contains(expected),
            "{body:?}: {message}"
        );
    }
    let err = parse("when,what\n1,2\n".as_bytes(), Path::new("bad.csv")).unwrap_err();
    assert!(
        err.to_string()
            .contains("line 1: the header has no `arrival_s`"),
        "{err}"
    );
}
