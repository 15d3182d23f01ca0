//! Headless Chromium (installed by scripts/setup.sh) for the tests of pages: the DOM after the
//! page's scripts ran, and screenshots whose colours can be counted.

use std::process::Command;

/// `chromium --headless … ARGS…` with its own profile directory.
pub fn chromium(args: &[&str], user_dir: &std::path::Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", user_dir.display()))
        .args(args)
        .output()
        .expect("chromium (installed by scripts/setup.sh)")
}

/// Pixels of exactly this colour in a PNG screenshot.
pub fn count_color(png_path: &std::path::Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected png colour type {other:?}"),
    };
    bytes.chunks(step).filter(|p| p[..3] == rgb).count()
}
