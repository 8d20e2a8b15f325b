//! Bar charts as SVG text, for `herald-bench compare --svg`: bars in groups (one group per
//! server, or per percentile with a bar per server), on a linear or a log axis, whiskers for the
//! range of several rounds, and a dashed reference line (the floor, a goal).
//!
//! Hand-written SVG: a chart is a few dozen elements, and a self-contained file (no script, no
//! web font, no stylesheet) renders the same in a browser, on GitHub, and in an `<img>`. What to
//! draw (which runs, which figures) is [`crate::compare`]'s business; this module knows no run.

use std::fmt::Write as _;

use crate::report::number;
use crate::stats::Spread;

/// Canvas size (px).
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 450.0;
/// The plot area inside the canvas: room on the left for the tick labels and the axis title,
/// above for the title and subtitle, below for the group labels and the legend.
const PLOT_LEFT: f64 = 92.0;
const PLOT_RIGHT: f64 = WIDTH - 24.0;
const PLOT_TOP: f64 = 84.0;
const PLOT_BOTTOM: f64 = HEIGHT - 76.0;
/// Widest bar (px): two servers would otherwise get slabs.
const BAR_WIDTH_MAX: f64 = 64.0;
/// Share of a group's width its bars take; the rest separates the groups.
const GROUP_FILL: f64 = 0.8;
/// The axis reaches this multiple of the largest value, leaving room for its label above it.
const HEADROOM: f64 = 1.12;
/// A log axis starts at least this factor below the smallest value, so that its bar shows.
const LOG_AXIS_ROOM: f64 = 3.0;
/// About how many ticks a linear axis gets.
const TICKS_WANTED: f64 = 5.0;
/// Bars narrower than this (px) get their value label in a smaller font.
const BAR_WIDTH_SMALL_LABEL: f64 = 34.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";
/// Colours told apart with every common colour-vision deficiency (Okabe and Ito's palette, its
/// yellow left out: too pale on white). [`FLOOR_COLOUR`] is for the floor.
pub const PALETTE: [&str; 6] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9"];
pub const FLOOR_COLOUR: &str = "#8C8C8C";

/// One chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    /// The second line: when, at what scale, how many rounds.
    pub subtitle: String,
    /// The vertical axis: what is measured, and its unit.
    pub axis: String,
    /// What the bars' colours stand for (servers).
    pub series: Vec<Series>,
    /// Groups of bars along the horizontal axis, labelled below it.
    pub groups: Vec<Group>,
    /// A dashed horizontal line across the plot, labelled at its right end.
    pub marker: Option<Marker>,
    /// A log axis (for figures that span decades, such as latency percentiles).
    pub log: bool,
    /// Show the series under the plot (when the group labels do not already name them).
    pub legend: bool,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub colour: String,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub label: String,
    pub bars: Vec<Bar>,
}

/// A bar: its height is the median; a range shows as a whisker.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Index in [`Chart::series`].
    pub series: usize,
    pub value: Spread,
}

#[derive(Debug, Clone)]
pub struct Marker {
    pub label: String,
    pub value: f64,
}

/// The vertical scale.
enum Axis {
    /// From 0 to `top`, ticks every `step`.
    Linear { top: f64, step: f64 },
    /// From 10^`low` to 10^`high`, a tick at each power of 10.
    Log { low: i32, high: i32 },
}

impl Axis {
    fn new(values: &[f64], log: bool) -> Self {
        let largest = values.iter().copied().fold(0.0, f64::max);
        if log {
            let smallest = values.iter().copied().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
            if smallest.is_finite() {
                // A bar near the bottom of the axis would be a sliver: start at least
                // LOG_AXIS_ROOM below the smallest value.
                let low = (smallest / LOG_AXIS_ROOM).log10().floor() as i32;
                let high = ((largest * HEADROOM).log10().ceil() as i32).max(low + 1);
                return Self::Log { low, high };
            }
        }
        let wanted = if largest > 0.0 { largest * HEADROOM } else { 1.0 };
        let step = nice(wanted / TICKS_WANTED);
        Self::Linear { top: (wanted / step).ceil() * step, step }
    }

    /// The y coordinate of `value`.
    fn y(&self, value: f64) -> f64 {
        let share = match *self {
            Self::Linear { top, .. } => value.max(0.0) / top,
            Self::Log { low, high } => {
                let low = f64::from(low);
                (value.max(10f64.powf(low)).log10() - low) / (f64::from(high) - low)
            }
        };
        PLOT_BOTTOM - share * (PLOT_BOTTOM - PLOT_TOP)
    }

    /// Each tick's value and label.
    fn ticks(&self) -> Vec<(f64, String)> {
        match *self {
            Self::Linear { top, step } => {
                let digits = decimals(step);
                let count = (top / step).round() as usize;
                (0..=count).map(|i| i as f64 * step).map(|v| (v, number(v, digits))).collect()
            }
            Self::Log { low, high } => {
                (low..=high).map(|e| (10f64.powi(e), number(10f64.powi(e), (-e).max(0) as usize))).collect()
            }
        }
    }
}

/// The smallest of 1, 2, 2.5 and 5 times a power of 10 that is at least `x` (a tick step).
fn nice(x: f64) -> f64 {
    let power = 10f64.powf(x.log10().floor());
    let fraction = x / power;
    power * [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|f| fraction <= *f + 1e-9).unwrap_or(10.0)
}

/// Decimals needed to write `step` and its multiples exactly (0.25: 2).
fn decimals(step: f64) -> usize {
    (0..6).find(|d| ((step * 10f64.powi(*d)).round() - step * 10f64.powi(*d)).abs() < 1e-6).unwrap_or(6)
        as usize
}

/// A bar's value label: three significant digits or so, integers grouped.
pub fn short(value: f64) -> String {
    let digits = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 => 2,
        _ => 3,
    };
    number(value, digits)
}

/// `text` escaped for SVG text and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart as a complete SVG document.
pub fn svg(chart: &Chart) -> String {
    let mut values: Vec<f64> = chart.groups.iter().flat_map(|g| g.bars.iter().map(|b| b.value.max)).collect();
    values.extend(chart.marker.as_ref().map(|m| m.value));
    values.extend(chart.groups.iter().flat_map(|g| g.bars.iter().map(|b| b.value.min)));
    let axis = Axis::new(&values, chart.log);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" role="img">"#
    );
    let _ = writeln!(out, "<title>{}</title>", escape(&chart.title));
    let _ = writeln!(out, r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##);
    let _ = writeln!(
        out,
        r##"<text class="title" x="{PLOT_LEFT}" y="28" font-size="17" font-weight="600" fill="#111">{}</text>"##,
        escape(&chart.title)
    );
    let _ = writeln!(
        out,
        r##"<text class="subtitle" x="{PLOT_LEFT}" y="49" font-size="12" fill="#555">{}</text>"##,
        escape(&chart.subtitle)
    );
    for (value, label) in axis.ticks() {
        let y = axis.y(value);
        let _ = writeln!(
            out,
            r##"<line x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{y:.2}" y2="{y:.2}" stroke="#e4e4e4"/><text x="{:.2}" y="{:.2}" font-size="11" text-anchor="end" fill="#444">{label}</text>"##,
            PLOT_LEFT - 6.0,
            y + 4.0
        );
    }
    let middle = (PLOT_TOP + PLOT_BOTTOM) / 2.0;
    let _ = writeln!(
        out,
        r##"<text class="axis" transform="translate(20 {middle:.2}) rotate(-90)" font-size="12" text-anchor="middle" fill="#333">{}</text>"##,
        escape(&chart.axis)
    );
    if let Some(marker) = &chart.marker {
        // The line runs behind the bars (and their labels); its label sits above the plot's top right corner, where no
        // bar reaches, after a short sample of the line.
        let y = axis.y(marker.value);
        let label_y = PLOT_TOP - 12.0;
        let _ = writeln!(
            out,
            r##"<line class="marker" x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{y:.2}" y2="{y:.2}" stroke="#111" stroke-width="1.5" stroke-dasharray="7 5"/>"##
        );
        let _ = writeln!(
            out,
            r##"<text class="marker-label" x="{PLOT_RIGHT}" y="{label_y:.2}" font-size="12" text-anchor="end" fill="#111">{}</text>"##,
            escape(&marker.label)
        );
        // About 7 px per character of a 12 px sans-serif font.
        let sample_end = PLOT_RIGHT - 7.0 * marker.label.chars().count() as f64 - 8.0;
        let _ = writeln!(
            out,
            r##"<line x1="{:.2}" x2="{sample_end:.2}" y1="{:.2}" y2="{:.2}" stroke="#111" stroke-width="1.5" stroke-dasharray="7 5"/>"##,
            sample_end - 30.0,
            label_y - 4.0,
            label_y - 4.0
        );
    }
    let group_width = (PLOT_RIGHT - PLOT_LEFT) / chart.groups.len().max(1) as f64;
    for (g, group) in chart.groups.iter().enumerate() {
        let centre = PLOT_LEFT + group_width * (g as f64 + 0.5);
        let bar_width = (group_width * GROUP_FILL / group.bars.len().max(1) as f64).min(BAR_WIDTH_MAX);
        let label_size = if bar_width < BAR_WIDTH_SMALL_LABEL { 9 } else { 11 };
        let first_x = centre - bar_width * group.bars.len() as f64 / 2.0;
        for (b, bar) in group.bars.iter().enumerate() {
            let series = &chart.series[bar.series];
            let (x, top) = (first_x + bar_width * b as f64, axis.y(bar.value.median));
            let mid = x + bar_width / 2.0;
            let range = if bar.value.varies() {
                format!(" [{}–{}]", short(bar.value.min), short(bar.value.max))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                r#"<rect class="bar" x="{x:.2}" y="{top:.2}" width="{:.2}" height="{:.2}" fill="{}"><title>{}: {}{range}</title></rect>"#,
                bar_width - 2.0,
                PLOT_BOTTOM - top,
                series.colour,
                escape(&series.name),
                short(bar.value.median)
            );
            let mut label_y = top - 5.0;
            if bar.value.varies() {
                let (low, high) = (axis.y(bar.value.min), axis.y(bar.value.max));
                let cap = bar_width * 0.15;
                let _ = writeln!(
                    out,
                    r##"<path class="whisker" d="M{mid:.2} {low:.2}V{high:.2}M{:.2} {low:.2}H{:.2}M{:.2} {high:.2}H{:.2}" stroke="#222" stroke-width="1.5" fill="none"/>"##,
                    mid - cap,
                    mid + cap,
                    mid - cap,
                    mid + cap
                );
                label_y = label_y.min(high - 5.0);
            }
            let _ = writeln!(
                out,
                r##"<text class="value" x="{mid:.2}" y="{label_y:.2}" font-size="{label_size}" text-anchor="middle" fill="#222" stroke="#ffffff" stroke-width="3" paint-order="stroke">{}</text>"##,
                short(bar.value.median)
            );
        }
        let _ = writeln!(
            out,
            r##"<text class="group" x="{centre:.2}" y="{:.2}" font-size="12" text-anchor="middle" fill="#222">{}</text>"##,
            PLOT_BOTTOM + 18.0,
            escape(&group.label)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{PLOT_BOTTOM}" y2="{PLOT_BOTTOM}" stroke="#333"/>"##
    );
    if chart.legend {
        let mut x = PLOT_LEFT;
        let y = HEIGHT - 22.0;
        for series in &chart.series {
            let _ = writeln!(
                out,
                r##"<rect class="legend" x="{x:.2}" y="{:.2}" width="12" height="12" fill="{}"/><text x="{:.2}" y="{y:.2}" font-size="12" fill="#222">{}</text>"##,
                y - 10.0,
                series.colour,
                x + 17.0,
                escape(&series.name)
            );
            // About 7 px per character of a 12 px sans-serif font, and a gap.
            x += 17.0 + 7.0 * series.name.chars().count() as f64 + 22.0;
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(values: &[f64], log: bool, marker: Option<f64>) -> Chart {
        Chart {
            title: "Deliveries <per> second".into(),
            subtitle: "2026-12-05 · 5,000 users × 3 tabs".into(),
            axis: "deliveries/s".into(),
            series: (0..values.len())
                .map(|i| Series { name: format!("server{i}"), colour: PALETTE[i].into() })
                .collect(),
            groups: values
                .iter()
                .enumerate()
                .map(|(i, v)| Group {
                    label: format!("server{i}"),
                    bars: vec![Bar { series: i, value: Spread::one(*v) }],
                })
                .collect(),
            marker: marker.map(|value| Marker { label: "floor: 100/s".into(), value }),
            log,
            legend: false,
        }
    }

    /// The value of attribute `name` in each element that starts with `tag`.
    fn attrs(svg: &str, tag: &str, name: &str) -> Vec<f64> {
        svg.match_indices(tag)
            .map(|(at, _)| {
                let element = &svg[at..at + svg[at..].find('>').unwrap()];
                let key = format!(" {name}=\"");
                let start = element.find(&key).unwrap() + key.len();
                element[start..start + element[start..].find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    /// Fails if bar heights are not proportional to the values, or start anywhere but the axis.
    #[test]
    fn bar_heights_are_proportional_to_values() {
        let svg = svg(&chart(&[100.0, 50.0, 25.0], false, None));
        let heights = attrs(&svg, r#"<rect class="bar""#, "height");
        let tops = attrs(&svg, r#"<rect class="bar""#, "y");
        assert_eq!(heights.len(), 3);
        assert!((heights[0] / heights[1] - 2.0).abs() < 0.01, "{heights:?}");
        assert!((heights[0] / heights[2] - 4.0).abs() < 0.01, "{heights:?}");
        for (top, height) in tops.iter().zip(&heights) {
            assert!((top + height - PLOT_BOTTOM).abs() < 0.01, "every bar stands on the axis");
        }
        assert!(heights[0] < PLOT_BOTTOM - PLOT_TOP, "the tallest bar fits");
    }

    /// Fails if the dashed line is not at its value's height (the top of a bar of that value).
    #[test]
    fn the_marker_is_drawn_at_its_value() {
        let svg = svg(&chart(&[100.0, 150.0], false, Some(100.0)));
        let marker = attrs(&svg, r#"<line class="marker""#, "y1");
        let tops = attrs(&svg, r#"<rect class="bar""#, "y");
        assert_eq!(marker.len(), 1);
        assert!((marker[0] - tops[0]).abs() < 0.01, "{marker:?} {tops:?}");
        assert!(svg.contains("stroke-dasharray") && svg.contains(">floor: 100/s</text>"));
        let label = attrs(&svg, r#"<text class="marker-label""#, "y");
        assert!(label[0] < PLOT_TOP, "the marker's label is above the plot, clear of the bars");
        assert!(!super::svg(&chart(&[1.0], false, None)).contains("class=\"marker\""));
    }

    /// Fails if a label, the title or the subtitle is missing, or text is not escaped.
    #[test]
    fn labels_and_titles_are_present_and_escaped() {
        let svg = svg(&chart(&[46_833.0, 78_465.0], false, None));
        for text in
            [">server0</text>", ">server1</text>", ">46,833</text>", ">78,465</text>", ">deliveries/s</text>"]
        {
            assert!(svg.contains(text), "{text} in {svg}");
        }
        assert!(svg.contains("Deliveries &lt;per&gt; second") && !svg.contains("<per>"));
        assert!(svg.contains("5,000 users × 3 tabs"));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.ends_with("</svg>\n"));
        let ticks = attrs(&svg, "<line x1=", "y1");
        assert!(ticks.len() >= 4, "a few ticks: {ticks:?}");
    }

    /// Fails if a log axis does not put each decade at the same height step.
    #[test]
    fn log_bars_grow_by_decades() {
        let svg = svg(&chart(&[0.1, 1.0, 10.0], true, None));
        let heights = attrs(&svg, r#"<rect class="bar""#, "height");
        assert!((heights[1] / heights[0] - 2.0).abs() < 0.01, "{heights:?}");
        assert!((heights[2] / heights[0] - 3.0).abs() < 0.01, "{heights:?}");
        assert!(svg.contains(">0.01</text>") && svg.contains(">100</text>"), "decade ticks");
    }

    /// Fails if rounds that disagree get no whisker, or rounds that agree get one.
    #[test]
    fn ranges_get_whiskers() {
        let mut c = chart(&[10.0, 20.0], false, None);
        c.groups[0].bars[0].value = Spread::of([8.0, 10.0, 12.0]).unwrap();
        let svg = svg(&c);
        assert_eq!(svg.matches("class=\"whisker\"").count(), 1);
        assert!(svg.contains("server0: 10.0 [8.00–12.0]"));
        c.legend = true;
        assert_eq!(super::svg(&c).matches("class=\"legend\"").count(), 2);
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(nice(17.0), 20.0);
        assert_eq!(nice(0.21), 0.25);
        assert_eq!(nice(4_000.0), 5_000.0);
        assert_eq!(decimals(0.25), 2);
        assert_eq!(decimals(5_000.0), 0);
    }
}
