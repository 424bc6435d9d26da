//! The training curve as an SVG picture: training loss and validation NDCG@10 per epoch, side by side.

use std::fmt::Write;

use crate::train::EpochRecord;

const PANEL_WIDTH: f64 = 420.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN: f64 = 48.0;

/// An SVG document plotting `history`, marking `best_epoch`.
pub fn training_curve_svg(title: &str, history: &[EpochRecord], best_epoch: usize) -> String {
    let width = 2.0 * (PANEL_WIDTH + MARGIN) + MARGIN;
    let height = PANEL_HEIGHT + 2.0 * MARGIN + 10.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="20" text-anchor="middle" font-size="14">{title}</text>
"#,
        x = width / 2.0,
        title = escape(title),
    );
    let epochs: Vec<f64> = history.iter().map(|r| r.epoch as f64).collect();
    let losses: Vec<f64> = history.iter().map(|r| r.train_loss).collect();
    let ndcg: Vec<f64> = history.iter().map(|r| r.validation.ndcg_at_10).collect();
    panel(
        &mut svg,
        MARGIN,
        "training loss",
        &epochs,
        &losses,
        "#1f77b4",
        best_epoch,
    );
    panel(
        &mut svg,
        2.0 * MARGIN + PANEL_WIDTH,
        "validation NDCG@10",
        &epochs,
        &ndcg,
        "#d62728",
        best_epoch,
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn panel(
    svg: &mut String,
    left: f64,
    label: &str,
    xs: &[f64],
    ys: &[f64],
    colour: &str,
    best: usize,
) {
    let top = MARGIN;
    let (x_min, x_max) = (1.0, xs.last().copied().unwrap_or(1.0).max(2.0));
    let finite = ys.iter().copied().filter(|y| y.is_finite());
    let y_min = finite.clone().fold(f64::INFINITY, f64::min);
    let y_max = finite.fold(f64::NEG_INFINITY, f64::max);
    let (y_min, y_max) = if y_min.is_finite() && y_max > y_min {
        let pad = 0.05 * (y_max - y_min);
        (y_min - pad, y_max + pad)
    } else if y_min.is_finite() {
        (y_min - 1.0, y_min + 1.0)
    } else {
        (0.0, 1.0)
    };
    let px = |x: f64| left + (x - x_min) / (x_max - x_min) * PANEL_WIDTH;
    let py = |y: f64| top + PANEL_HEIGHT - (y - y_min) / (y_max - y_min) * PANEL_HEIGHT;
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#888"/>
<text x="{cx}" y="{ty}" text-anchor="middle">{label}</text>
<text x="{cx}" y="{by}" text-anchor="middle">epoch</text>
<text x="{lx}" y="{ymaxy}" text-anchor="end">{ymax:.4}</text>
<text x="{lx}" y="{yminy}" text-anchor="end">{ymin:.4}</text>
<text x="{left}" y="{xy}" text-anchor="middle">{x_min}</text>
<text x="{right}" y="{xy}" text-anchor="middle">{x_max}</text>"##,
        cx = left + PANEL_WIDTH / 2.0,
        ty = top - 8.0,
        by = top + PANEL_HEIGHT + 34.0,
        lx = left - 4.0,
        ymaxy = top + 10.0,
        yminy = top + PANEL_HEIGHT,
        ymax = y_max,
        ymin = y_min,
        xy = top + PANEL_HEIGHT + 16.0,
        right = left + PANEL_WIDTH,
    );
    if best >= 1 && best as f64 <= x_max {
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#2ca02c" stroke-dasharray="4 3"/>"##,
            x = px(best as f64),
            bottom = top + PANEL_HEIGHT,
        );
    }
    let points: Vec<String> = xs
        .iter()
        .zip(ys)
        .filter(|(_, y)| y.is_finite())
        .map(|(&x, &y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
        points.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerec_core::RankingMetrics;

    #[test]
    fn plots_every_epoch_and_marks_the_best() {
        let history: Vec<EpochRecord> = (1..=3)
            .map(|epoch| EpochRecord {
                epoch,
                steps: epoch as u64 * 10,
                train_loss: 5.0 - epoch as f64,
                learning_rate: 1e-3,
                validation: RankingMetrics {
                    ndcg_at_10: 0.1 * epoch as f64,
                    ..Default::default()
                },
                seconds: 1.0,
                examples_per_second: 100.0,
                host_seconds: 0.0,
                exchange_seconds: 0.0,
            })
            .collect();
        let svg = training_curve_svg("ml-1m <sasrec>", &history, 2);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("ml-1m &lt;sasrec&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let polyline = svg
            .split("<polyline points=\"")
            .nth(1)
            .expect("test step succeeds");
        assert_eq!(
            polyline
                .split('"')
                .next()
                .expect("test step succeeds")
                .split(' ')
                .count(),
            3
        );
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
    }
}
