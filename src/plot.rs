//! Line charts, SVG or PNG: variance against depth for the probe, accuracy against epoch
//! for experiments.
//!
//! SVG by plotters' SVG backend, PNG by its bitmap backend (encoded by the `image` crate).
//! Both lay text out with DejaVu Sans, embedded (assets/DejaVuSans.ttf, from Debian's
//! fonts-dejavu-core; its license beside it), so that text renders the same everywhere.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// The two formats, by a path's extension: `.png` is PNG, anything else SVG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("png") => Format::Png,
            _ => Format::Svg,
        }
    }
}

const SIZE: (u32, u32) = (900, 540);
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font as plotters' "sans-serif" (once).
fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| "the embedded font is invalid".to_string())
    })
    .clone()
}

/// Draws `series` on one chart in `format`; returns the file's bytes. `log_y` plots
/// log10(y) (non-positive values are dropped), labelled as such.
pub fn line_chart_as(format: Format, title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool) -> Result<Vec<u8>, String> {
    match format {
        Format::Svg => line_chart(title, x_label, y_label, series, log_y).map(String::into_bytes),
        Format::Png => {
            let (w, h) = SIZE;
            let mut rgb = vec![0u8; (w * h * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw(&root, title, x_label, y_label, series, log_y)?;
            }
            let img = image::RgbImage::from_raw(w, h, rgb).ok_or("the bitmap has the wrong size")?;
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| e.to_string())?;
            Ok(png)
        }
    }
}

/// One named line of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` on one chart and returns the SVG text (see [`line_chart_as`]).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, title, x_label, y_label, series, log_y)?;
    }
    Ok(svg)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<(), String> {
    // Both backends lay text out with it (with plotters' `ab_glyph` feature, an
    // unregistered family is an error even for SVG).
    register_font()?;
    let transform = |y: f64| if log_y { (y > 0.0).then(|| y.log10()) } else { Some(y) };
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().filter_map(|&(x, y)| transform(y).filter(|v| v.is_finite()).map(|v| (x, v))).collect())
        .collect();
    let all: Vec<&(f64, f64)> = pts.iter().flatten().collect();
    if all.is_empty() {
        return Err("nothing to plot".into());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &&(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let (y0, y1) = (y0 - pad, y1 + pad);
    {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        let y_desc = if log_y { format!("log10 {y_label}") } else { y_label.to_string() };
        chart.configure_mesh().x_desc(x_label).y_desc(y_desc).draw().map_err(|e| e.to_string())?;
        for (k, (s, p)) in series.iter().zip(&pts).enumerate() {
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(LineSeries::new(p.iter().cloned(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(())
}
