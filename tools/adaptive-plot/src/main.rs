//! Turns a CSV trace of an adaptive concurrency limit under a stepped load (one row per 100 ms, as
//! the conformance test `adaptive::load_steps` writes with `TOLLGATE_ADAPTIVE_TRACE` set) into an
//! SVG chart for the README: three panels over time — concurrency (the limit, in flight, the load
//! and the service's N workers ± 30%), latency (client p50/p99 of admitted requests and the
//! limit's server-side window mean) and requests per second (admitted and refused).
//!
//! Run with: cargo run -p adaptive-plot -- IN.csv OUT.svg
//! (or via `scripts/adaptive-plot.sh`, which runs the test first).
//!
//! Empty fields are gaps in a line; a malformed file is an error message and exit status 1.

// A command-line tool: its errors go to stderr.
#![allow(clippy::print_stderr)]

use std::error::Error;
use std::process::ExitCode;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The columns of the trace, in the order the test writes them (the tool finds them by name).
const COLUMNS: [&str; 10] = [
    "t_ms",
    "clients",
    "workers",
    "limit",
    "in_flight",
    "server_latency_ms",
    "p50_ms",
    "p99_ms",
    "ok_per_s",
    "refused_per_s",
];

/// The trace: the time of each row in seconds and, per column of [`COLUMNS`] after `t_ms`, one
/// value per row (`None` where the field was empty).
struct Trace {
    t_s: Vec<f64>,
    cols: Vec<Vec<Option<f64>>>,
}

impl Trace {
    /// The values of the column `name` (one of [`COLUMNS`] after `t_ms`).
    fn col(&self, name: &str) -> &[Option<f64>] {
        let i = COLUMNS[1..].iter().position(|c| *c == name);
        i.and_then(|i| self.cols.get(i)).map_or(&[], Vec::as_slice)
    }
}

/// Parses the CSV text; errors name the line and column.
fn parse(text: &str) -> Result<Trace, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("empty file (no header line)")?;
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    let index = COLUMNS
        .iter()
        .map(|name| header.iter().position(|h| h == name).ok_or(format!("header has no column {name:?}")))
        .collect::<Result<Vec<usize>, String>>()?;
    let mut trace = Trace { t_s: Vec::new(), cols: vec![Vec::new(); COLUMNS.len() - 1] };
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            return Err(format!("line {}: {} fields, the header has {}", n + 1, fields.len(), header.len()));
        }
        for (c, (&i, name)) in index.iter().zip(COLUMNS).enumerate() {
            let field = fields[i];
            let value = if field.is_empty() {
                None
            } else {
                match field.parse::<f64>() {
                    Ok(v) if v.is_finite() => Some(v),
                    _ => return Err(format!("line {}: {name} is not a number: {field:?}", n + 1)),
                }
            };
            match (c, value) {
                (0, Some(t)) => trace.t_s.push(t / 1000.0),
                (0, None) => return Err(format!("line {}: t_ms is empty", n + 1)),
                (c, v) => trace.cols[c - 1].push(v),
            }
        }
    }
    if trace.t_s.is_empty() {
        return Err("no data rows after the header".into());
    }
    Ok(trace)
}

/// One line of a panel (2 px wide): its legend label, colour and values (one per row).
struct Line<'a> {
    label: &'a str,
    color: RGBColor,
    values: &'a [Option<f64>],
}

/// The runs of consecutive non-empty points of `values` against `t`: a line breaks at a gap. A
/// lone point becomes a short level segment over its 100 ms row, so that it still shows.
fn runs(t: &[f64], values: &[Option<f64>]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for (&x, v) in t.iter().zip(values) {
        match (v, runs.last_mut()) {
            (Some(y), Some(run)) => run.push((x, *y)),
            (None, Some(run)) if !run.is_empty() => runs.push(Vec::new()),
            _ => {}
        }
    }
    runs.retain(|r| !r.is_empty());
    for run in &mut runs {
        if let [(x, y)] = run[..] {
            *run = vec![(x - 0.05, y), (x + 0.05, y)];
        }
    }
    runs
}

/// An axis label: whole numbers without a fraction (`20`, not `20.0`), others with one decimal.
fn tick(v: &f64) -> String {
    if v.fract().abs() < 1e-9 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// The width of the column right of every panel where its legend goes, beside the plot rather
/// than over its lines.
const LEGEND_WIDTH: u32 = 170;

/// How a legend entry is marked: a line, a dashed line or a shaded band.
#[derive(Clone, Copy)]
enum Mark {
    Line(ShapeStyle),
    Dashed(ShapeStyle),
    Band(ShapeStyle),
}

/// Draws one panel: `lines` over `t` with a legend, and where `workers` is given a dashed line at
/// N with a shaded band of N ± 30%. Only the bottom panel (`x_desc` given) names the x axis.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    t: &[f64],
    lines: &[Line<'_>],
    workers: Option<f64>,
    x_desc: Option<&str>,
) -> Result<(), Box<dyn Error>> {
    let (plot, legend) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(LEGEND_WIDTH));
    let x_max = t.iter().copied().fold(0.1, f64::max);
    let data_max = lines.iter().flat_map(|l| l.values.iter().flatten()).copied();
    let y_max = data_max.chain(workers.map(|n| n * 1.3)).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, ("sans-serif", 16))
        .margin_right(15)
        .x_label_area_size(if x_desc.is_some() { 40 } else { 22 })
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .max_light_lines(0)
        .bold_line_style(BLACK.mix(0.1))
        .x_desc(x_desc.unwrap_or(""))
        .x_labels(12)
        .y_labels(6)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()?;

    let mut entries = Vec::new();
    if let Some(n) = workers {
        let band = RGBColor(120, 120, 120).mix(0.15).filled();
        chart.draw_series([Rectangle::new([(0.0, n * 0.7), (x_max, n * 1.3)], band)])?;
        let dash = BLACK.stroke_width(1);
        chart.draw_series(DashedLineSeries::new([(0.0, n), (x_max, n)], 6, 4, dash))?;
        entries.push(("N ± 30%".to_owned(), Mark::Band(band)));
        entries.push((format!("N = {n} workers"), Mark::Dashed(dash)));
    }
    for line in lines {
        let style = line.color.stroke_width(2);
        chart.draw_series(runs(t, line.values).into_iter().map(|run| PathElement::new(run, style)))?;
        entries.push((line.label.to_owned(), Mark::Line(style)));
    }

    // The legend, top-aligned with the plot (below the caption).
    let font = TextStyle::from(("sans-serif", 13)).pos(Pos::new(HPos::Left, VPos::Center));
    for (y, (label, mark)) in (34..).step_by(18).zip(entries) {
        let (a, b) = ((4, y), (28, y));
        match mark {
            Mark::Line(style) => legend.draw(&PathElement::new([a, b], style))?,
            Mark::Dashed(style) => legend.draw(&DashedPathElement::new([a, b], 5, 3, style))?,
            Mark::Band(style) => legend.draw(&Rectangle::new([(4, y - 6), (28, y + 6)], style))?,
        }
        legend.draw(&Text::new(label, (36, y), font.clone()))?;
    }
    Ok(())
}

/// Reads `input`, draws the chart into `output`.
fn run(input: &str, output: &str) -> Result<(), Box<dyn Error>> {
    let text = std::fs::read_to_string(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    let trace = parse(&text).map_err(|e| format!("{input}: {e}"))?;
    let workers = trace.col("workers").iter().flatten().copied().next();
    let n = workers.map_or_else(|| "?".to_owned(), |n| n.to_string());

    let root = SVGBackend::new(output, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!("Adaptive limit (gradient) — N = {n} workers, load stepping up and down");
    let root = root.titled(&title, ("sans-serif", 24))?;
    let panels = root.split_evenly((3, 1));
    let [concurrency, latency, rate] = panels.as_slice() else {
        return Err("cannot split the chart into three panels".into());
    };

    let (blue, orange, grey) = (RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(90, 90, 90));
    let (green, red, purple) = (RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189));
    let line = |label, color, name| Line { label, color, values: trace.col(name) };
    let t = &trace.t_s;
    panel(
        concurrency,
        "Concurrency",
        t,
        &[
            line("clients (load)", grey, "clients"),
            line("in flight", orange, "in_flight"),
            line("limit (adaptive cap)", blue, "limit"),
        ],
        workers,
        None,
    )?;
    panel(
        latency,
        "Latency (ms)",
        t,
        &[
            line("client p50 (admitted)", green, "p50_ms"),
            line("client p99 (admitted)", red, "p99_ms"),
            line("server window mean", purple, "server_latency_ms"),
        ],
        None,
        None,
    )?;
    panel(
        rate,
        "Requests per second",
        t,
        &[line("ok (200)", green, "ok_per_s"), line("refused (503)", red, "refused_per_s")],
        None,
        Some("time (s)"),
    )?;
    root.present().map_err(|e| format!("cannot write {output}: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: adaptive-plot IN.csv OUT.svg");
        return ExitCode::from(2);
    };
    match run(input, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adaptive-plot: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "t_ms,clients,workers,limit,in_flight,server_latency_ms,p50_ms,p99_ms,ok_per_s,refused_per_s";

    #[test]
    fn parses_rows_with_empty_fields() {
        let text = format!("{HEADER}\n0,10,20,4,3,,21.3,24.8,450.0,12.0\r\n100,10,20,20,9,21.0,,,470.0,0.0\n\n");
        let trace = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(trace.t_s, [0.0, 0.1]);
        assert_eq!(trace.col("limit"), [Some(4.0), Some(20.0)]);
        assert_eq!(trace.col("server_latency_ms"), [None, Some(21.0)]);
        assert_eq!(trace.col("p99_ms"), [Some(24.8), None]);
    }

    #[test]
    fn bad_files_are_errors() {
        let cases = [
            ("", "empty file"),
            (HEADER, "no data rows"),
            ("t_ms,clients\n0,1", "no column \"workers\""),
            (&format!("{HEADER}\n0,10,20"), "line 2: 3 fields"),
            (&format!("{HEADER}\n0,10,20,x,3,,1,2,3,4"), "line 2: limit is not a number"),
            (&format!("{HEADER}\n,10,20,4,3,,1,2,3,4"), "line 2: t_ms is empty"),
        ];
        for (text, want) in cases {
            match parse(text) {
                Ok(_) => panic!("{text:?} parsed"),
                Err(e) => assert!(e.contains(want), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn lines_break_at_gaps() {
        let t = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5];
        let runs = runs(&t, &[Some(1.0), Some(2.0), None, None, Some(3.0), None]);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0], [(0.0, 1.0), (0.1, 2.0)]);
        // The lone point at 0.4 s: a level segment over its row.
        let [(x0, 3.0), (x1, 3.0)] = runs[1][..] else { panic!("{:?}", runs[1]) };
        assert!((x0 - 0.35).abs() < 1e-9 && (x1 - 0.45).abs() < 1e-9, "{x0} {x1}");
    }
}
