//! Minimal SVG charts for the benchmark report: enough for grouped bars,
//! with no plotting dependency.

use std::fmt::Write as _;

/// A horizontal bar chart: one bar per (label, value), annotated with the
/// value and `unit`.
pub fn bars(title: &str, unit: &str, data: &[(String, f64)]) -> String {
    let row = 26.0;
    let left = 260.0;
    let width = 760.0;
    let plot_w = width - left - 110.0;
    let height = 50.0 + row * data.len() as f64 + 20.0;
    let max = data
        .iter()
        .map(|d| d.1)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="10" y="24" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, (label, v)) in data.iter().enumerate() {
        let y = 44.0 + row * i as f64;
        let w = (v / max * plot_w).max(1.0);
        let _ = write!(
            s,
            r##"<text x="{x}" y="{ty}" text-anchor="end">{l}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{h}" fill="#3b6fb6"/><text x="{vx:.1}" y="{ty}">{v} {u}</text>"##,
            x = left - 8.0,
            ty = y + row * 0.6,
            l = esc(label),
            h = row - 6.0,
            vx = left + w + 6.0,
            v = fmt_num(*v),
            u = esc(unit),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Value with up to three significant decimals.
pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
