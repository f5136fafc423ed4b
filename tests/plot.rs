//! Charts in both formats: the PNG is a real 900×540 image with the lines in their
//! colours and the text drawn (with the embedded font); the format follows the extension.

use cnnc::plot::{line_chart, line_chart_as, Format, Series};
use std::path::Path;

fn series() -> Vec<Series> {
    vec![
        Series { name: "forward".into(), points: (1..=10).map(|l| (l as f64, 1.0 + 0.1 * l as f64)).collect() },
        Series { name: "xavier".into(), points: (1..=10).map(|l| (l as f64, 0.5f64.powi(l))).collect() },
    ]
}

fn png(title: &str) -> image::RgbImage {
    let bytes = line_chart_as(Format::Png, title, "layer", "variance", &series(), true).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

#[test]
fn png_has_lines_and_text() {
    let img = png("probe: measured variance");
    assert_eq!(img.dimensions(), (900, 540));
    let colored = img.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 100).count();
    assert!(colored > 500, "the two coloured lines: {colored} coloured pixels");
    // The caption band: text pixels, and different text draws different pixels.
    let other = png("another title, longer than the first one");
    let dark_in_caption =
        |im: &image::RgbImage| (0..40).flat_map(|y| (0..900).map(move |x| (x, y))).filter(|&(x, y)| im.get_pixel(x, y).0[0] < 100).count();
    assert!(dark_in_caption(&img) > 100, "caption text drawn");
    assert_ne!(dark_in_caption(&img), dark_in_caption(&other));
}

#[test]
fn format_follows_the_extension_and_svg_is_text() {
    assert_eq!(Format::of(Path::new("probe.PNG")), Format::Png);
    assert_eq!(Format::of(Path::new("probe.svg")), Format::Svg);
    assert_eq!(Format::of(Path::new("probe")), Format::Svg);
    let svg = line_chart("t", "x", "y", &series(), false).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("xavier"));
    assert_eq!(line_chart_as(Format::Svg, "t", "x", "y", &series(), false).unwrap(), svg.into_bytes());
}
