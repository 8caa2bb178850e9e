//! Charts of results, as PNG and SVG (plotters, with an embedded DejaVu Sans so that no
//! system font is needed):
//!
//! - `latency`: p50/p90/p99 latency per time bucket (p50 and p99 per run with several runs);
//! - `throughput`: successful and failed responses per second;
//! - `workers`: the latency distribution (CDF) per worker;
//! - `runs`: the latency CDF per run (only with several runs: the policy comparison);
//! - `containers`: container count and categories from the agent (only with agent data);
//! - `timeline`: latency, throughput and containers stacked on one time axis.

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, Palette99, register_font},
};

use crate::{
    Error,
    agent::{AgentSample, CATEGORIES},
    results::RequestRecord,
    stats::percentile,
};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1200;
const PANEL_HEIGHT: u32 = 420;
/// At most this many lines per chart (the rest are left out).
const MAX_LINES: usize = 12;
/// Points per CDF line.
const CDF_POINTS: usize = 400;

/// What to draw and where.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    pub out_dir: PathBuf,
    /// Width of the time buckets.
    pub bucket: Duration,
    /// Put before every chart title.
    pub title: Option<String>,
    /// The agent's view over time (empty: no container charts).
    pub agent: Vec<AgentSample>,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

/// One chart: lines on shared axes.
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    title: String,
    x_label: String,
    y_label: String,
    lines: Vec<Line>,
    /// Fixed x range (else from the points).
    x_range: Option<Range<f64>>,
    /// Fixed y maximum (else from the points).
    y_max: Option<f64>,
    /// Where the legend goes (out of the way of the lines).
    legend: SeriesLabelPosition,
}

/// Draws every chart of `runs` (label, records); returns the files written.
pub fn plot(
    runs: &[(String, Vec<RequestRecord>)],
    options: &PlotOptions,
) -> Result<Vec<PathBuf>, Error> {
    if runs.iter().all(|(_, records)| records.is_empty()) {
        return Err(Error::Invalid(
            "the results hold no requests to plot".into(),
        ));
    }
    register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| Error::Plot {
        path: PathBuf::from("assets/DejaVuSans.ttf"),
        message: "the embedded font is not a valid TrueType font".into(),
    })?;
    std::fs::create_dir_all(&options.out_dir).map_err(|err| Error::io(&options.out_dir, err))?;
    let prefix = options
        .title
        .as_deref()
        .map_or_else(String::new, |t| format!("{t}: "));
    let bucket = options.bucket.as_secs_f64().max(0.001);
    let end = runs
        .iter()
        .flat_map(|(_, records)| records.iter().map(RequestRecord::done_s))
        .fold(0.0_f64, f64::max);
    let time_range = 0.0..(end.max(bucket));

    let mut latency = latency_panel(runs, bucket);
    latency.title = format!("{prefix}{}", latency.title);
    latency.x_range = Some(time_range.clone());
    let mut throughput = throughput_panel(runs, bucket);
    throughput.title = format!("{prefix}{}", throughput.title);
    throughput.x_range = Some(time_range.clone());
    let mut workers = workers_panel(runs);
    workers.title = format!("{prefix}{}", workers.title);

    let mut charts: Vec<(&str, Vec<Panel>)> = vec![
        ("latency", vec![latency.clone()]),
        ("throughput", vec![throughput.clone()]),
        ("workers", vec![workers]),
    ];
    if runs.len() > 1 {
        let mut compare = runs_panel(runs);
        compare.title = format!("{prefix}{}", compare.title);
        charts.push(("runs", vec![compare]));
    }
    let mut timeline = vec![latency, throughput];
    if !options.agent.is_empty() {
        let start_ms = runs
            .iter()
            .find_map(|(_, records)| records.first())
            .map_or(0.0, RequestRecord::run_start_unix_ms);
        let mut containers = containers_panel(&options.agent, start_ms, time_range.end);
        containers.title = format!("{prefix}{}", containers.title);
        containers.x_range = Some(time_range);
        charts.push(("containers", vec![containers.clone()]));
        timeline.push(containers);
    }
    charts.push(("timeline", timeline));

    let mut written = Vec::new();
    for (name, panels) in &charts {
        let height = PANEL_HEIGHT * panels.len() as u32;
        let png = options.out_dir.join(format!("{name}.png"));
        let svg = options.out_dir.join(format!("{name}.svg"));
        {
            let root = BitMapBackend::new(&png, (WIDTH, height)).into_drawing_area();
            draw(&root, panels)
                .and_then(|()| root.present().map_err(|e| e.to_string()))
                .map_err(|message| Error::Plot {
                    path: png.clone(),
                    message,
                })?;
        }
        {
            let root = SVGBackend::new(&svg, (WIDTH, height)).into_drawing_area();
            draw(&root, panels)
                .and_then(|()| root.present().map_err(|e| e.to_string()))
                .map_err(|message| Error::Plot {
                    path: svg.clone(),
                    message,
                })?;
        }
        written.push(png);
        written.push(svg);
    }
    Ok(written)
}

/// Latency percentiles per bucket of due time.
fn latency_panel(runs: &[(String, Vec<RequestRecord>)], bucket: f64) -> Panel {
    let several = runs.len() > 1;
    let mut lines = Vec::new();
    for (label, records) in runs {
        let mut buckets: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for record in records.iter().filter(|r| r.ok()) {
            buckets
                .entry((record.due_s / bucket) as u64)
                .or_default()
                .push(record.latency_ms);
        }
        for values in buckets.values_mut() {
            values.sort_by(f64::total_cmp);
        }
        let quantiles: &[f64] = if several {
            &[50.0, 99.0]
        } else {
            &[50.0, 90.0, 99.0]
        };
        for &q in quantiles {
            let points = buckets
                .iter()
                .map(|(i, values)| (*i as f64 * bucket, percentile(values, q)))
                .collect();
            let name = format!("p{q:.0}");
            lines.push(Line {
                label: if several {
                    format!("{label} {name}")
                } else {
                    name
                },
                points,
            });
        }
    }
    Panel {
        title: "latency percentiles".into(),
        x_label: "time (s)".into(),
        y_label: "latency (ms)".into(),
        lines,
        x_range: None,
        y_max: None,
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// Successful and failed responses per second, by completion time.
fn throughput_panel(runs: &[(String, Vec<RequestRecord>)], bucket: f64) -> Panel {
    let several = runs.len() > 1;
    let mut lines = Vec::new();
    for (label, records) in runs {
        let last = records
            .iter()
            .map(|r| (r.done_s() / bucket) as u64)
            .max()
            .unwrap_or(0);
        let mut ok = vec![0u64; last as usize + 1];
        let mut failed = vec![0u64; last as usize + 1];
        for record in records {
            let i = (record.done_s() / bucket) as usize;
            if record.ok() {
                ok[i] += 1;
            } else {
                failed[i] += 1;
            }
        }
        // The last bucket is cut short by the end of the run: leave it out when it covers
        // less than its width, rather than show a false drop.
        let end = records
            .iter()
            .map(RequestRecord::done_s)
            .fold(0.0, f64::max);
        let full = if last > 0 && end < (last + 1) as f64 * bucket {
            last as usize
        } else {
            last as usize + 1
        };
        let rate = |counts: &[u64]| {
            counts[..full]
                .iter()
                .enumerate()
                .map(|(i, n)| (i as f64 * bucket, *n as f64 / bucket))
                .collect::<Vec<_>>()
        };
        let name = |what: &str| {
            if several {
                format!("{label} {what}")
            } else {
                what.to_owned()
            }
        };
        lines.push(Line {
            label: name("ok/s"),
            points: rate(&ok),
        });
        if failed[..full].iter().any(|n| *n > 0) {
            lines.push(Line {
                label: name("errors/s"),
                points: rate(&failed),
            });
        }
    }
    Panel {
        title: "throughput".into(),
        x_label: "time (s)".into(),
        y_label: "responses per second".into(),
        lines,
        x_range: None,
        y_max: None,
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// The CDF of `latencies` (sorted), at most [`CDF_POINTS`] points.
fn cdf(latencies: &[f64]) -> Vec<(f64, f64)> {
    let n = latencies.len();
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(CDF_POINTS).max(1);
    let mut points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (latencies[i], (i + 1) as f64 / n as f64 * 100.0))
        .collect();
    points.push((latencies[n - 1], 100.0));
    points
}

fn sorted_ok_latencies<'a>(records: impl Iterator<Item = &'a RequestRecord>) -> Vec<f64> {
    let mut values: Vec<f64> = records.filter(|r| r.ok()).map(|r| r.latency_ms).collect();
    values.sort_by(f64::total_cmp);
    values
}

/// A CDF panel whose x axis stops at the largest p99.9 of its lines.
fn cdf_panel(title: &str, groups: Vec<(String, Vec<f64>)>) -> Panel {
    let x_max = groups
        .iter()
        .map(|(_, values)| percentile(values, 99.9))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let lines = groups
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(label, values)| Line {
            label: format!("{label} (n={})", values.len()),
            points: cdf(&values)
                .into_iter()
                .map(|(x, y)| (x.min(x_max), y))
                .collect(),
        })
        .collect();
    Panel {
        title: title.into(),
        x_label: "latency (ms)".into(),
        y_label: "requests at or below (%)".into(),
        lines,
        x_range: Some(0.0..x_max * 1.02),
        y_max: Some(100.0),
        legend: SeriesLabelPosition::LowerRight,
    }
}

fn workers_panel(runs: &[(String, Vec<RequestRecord>)]) -> Panel {
    let several = runs.len() > 1;
    let mut groups = Vec::new();
    for (label, records) in runs {
        let mut by_worker: BTreeMap<&str, Vec<&RequestRecord>> = BTreeMap::new();
        for record in records {
            let key = if record.backend.is_empty() {
                crate::stats::UNKNOWN_BACKEND
            } else {
                record.backend.as_str()
            };
            by_worker.entry(key).or_default().push(record);
        }
        for (worker, group) in by_worker {
            let name = if several {
                format!("{label}: {worker}")
            } else {
                worker.to_owned()
            };
            groups.push((name, sorted_ok_latencies(group.into_iter())));
        }
    }
    cdf_panel("latency distribution per worker", groups)
}

fn runs_panel(runs: &[(String, Vec<RequestRecord>)]) -> Panel {
    let groups = runs
        .iter()
        .map(|(label, records)| (label.clone(), sorted_ok_latencies(records.iter())))
        .collect();
    cdf_panel("latency distribution per run", groups)
}

/// Container count and categories as step lines over the run's time axis.
fn containers_panel(samples: &[AgentSample], start_ms: f64, end_s: f64) -> Panel {
    let t = |sample: &AgentSample| ((sample.unix_ms as f64 - start_ms) / 1e3).max(0.0);
    let steps = |value: &dyn Fn(&AgentSample) -> f64| {
        let mut points: Vec<(f64, f64)> = Vec::new();
        for sample in samples {
            let x = t(sample);
            if x > end_s {
                break;
            }
            if let Some(&(_, previous)) = points.last() {
                points.push((x, previous));
            }
            points.push((x, value(sample)));
        }
        if let Some(&(_, last)) = points.last() {
            points.push((end_s, last));
        }
        points
    };
    let mut lines = vec![Line {
        label: "containers".into(),
        points: steps(&|s: &AgentSample| f64::from(s.containers)),
    }];
    if samples.iter().any(|s| s.categories.is_some()) {
        for (i, category) in CATEGORIES.iter().enumerate() {
            let points =
                steps(&|s: &AgentSample| s.categories.map_or(0.0, |counts| f64::from(counts[i])));
            if points.iter().any(|(_, y)| *y > 0.0) {
                lines.push(Line {
                    label: category.as_str().to_owned(),
                    points,
                });
            }
        }
    }
    let y_max = samples
        .iter()
        .map(|s| s.containers)
        .max()
        .unwrap_or(1)
        .max(1);
    Panel {
        title: "containers (deployment agent)".into(),
        x_label: "time (s)".into(),
        y_label: "containers".into(),
        lines,
        x_range: None,
        y_max: Some(f64::from(y_max) + 1.0),
        legend: SeriesLabelPosition::UpperLeft,
    }
}

/// Draws `panels` stacked vertically on `root`.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, panels: &[Panel]) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let points = || panel.lines.iter().flat_map(|l| l.points.iter());
    let x_range = panel.x_range.clone().unwrap_or_else(|| {
        let (lo, hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
        if lo.is_finite() && hi > lo {
            lo..hi
        } else {
            0.0..1.0
        }
    });
    let y_max = panel.y_max.unwrap_or_else(|| {
        let top = points().map(|(_, y)| *y).fold(0.0_f64, f64::max);
        if top > 0.0 { top * 1.1 } else { 1.0 }
    });
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .label_style((FAMILY, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, line) in panel.lines.iter().take(MAX_LINES).enumerate() {
        let color = color(i);
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(line.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if !panel.lines.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(panel.legend.clone())
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Line colours: Tableau 10, then plotters' palette.
fn color(i: usize) -> RGBAColor {
    const TABLEAU: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match TABLEAU.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b).to_rgba(),
        None => Palette99::pick(i).to_rgba(),
    }
}

/// The label of a results file: its name without the extension.
pub fn label_of(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests;
