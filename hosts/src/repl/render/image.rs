//! Images in a terminal: the kitty graphics protocol, iTerm2 inline images, sixel (encoded here,
//! with a fixed 6×6×6 colour cube), Unicode half blocks, or just the saved file's path. Which one
//! is picked from the environment unless `--images` forces it.

use std::fmt::Write as _;

use base64::Engine as _;
use image::{imageops::FilterType, DynamicImage, GenericImageView, RgbaImage};

/// How images are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageMode {
    /// The kitty graphics protocol (kitty, Ghostty, WezTerm).
    Kitty,
    /// iTerm2 inline images (iTerm2, WezTerm, mintty).
    Iterm,
    /// Sixel graphics (foot, mlterm, xterm -ti vt340, contour).
    Sixel,
    /// Unicode half blocks in colour, scaled to the terminal's width.
    Blocks,
    /// Only the path of the saved file and the image's size.
    Path,
}

/// Pick an image mode from the environment. Inside tmux or screen, which pass none of the
/// graphics protocols through by default, only the path is printed.
pub fn detect(env: &dyn Fn(&str) -> Option<String>, stdout_tty: bool, color: bool) -> ImageMode {
    if !stdout_tty {
        return ImageMode::Path;
    }
    let term = env("TERM").unwrap_or_default();
    let program = env("TERM_PROGRAM").unwrap_or_default();
    if env("TMUX").is_some()
        || term.starts_with("tmux")
        || term.starts_with("screen")
        || program == "tmux"
    {
        return ImageMode::Path;
    }
    if env("KITTY_WINDOW_ID").is_some() || term == "xterm-kitty" || program == "ghostty" {
        return ImageMode::Kitty;
    }
    if program == "iTerm.app"
        || program == "WezTerm"
        || program == "mintty"
        || env("LC_TERMINAL").as_deref() == Some("iTerm2")
    {
        return ImageMode::Iterm;
    }
    if term.contains("sixel")
        || term.starts_with("foot")
        || term.starts_with("mlterm")
        || term.starts_with("yaft")
        || term.starts_with("contour")
    {
        return ImageMode::Sixel;
    }
    if color {
        ImageMode::Blocks
    } else {
        ImageMode::Path
    }
}

/// Whether the terminal takes 24-bit colour (else the 256-colour palette is used).
pub fn truecolor(env: &dyn Fn(&str) -> Option<String>) -> bool {
    matches!(
        env("COLORTERM").as_deref(),
        Some("truecolor") | Some("24bit")
    ) || matches!(
        env("TERM_PROGRAM").as_deref(),
        Some("iTerm.app") | Some("WezTerm") | Some("ghostty") | Some("vscode")
    ) || env("KITTY_WINDOW_ID").is_some()
}

pub fn decode_base64(data: &str) -> Option<Vec<u8>> {
    let cleaned: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned)
        .ok()
}

/// Scale `img` to at most `cols` pixels wide and `max_rows` pixels tall, never up.
fn fit(img: &DynamicImage, max_w: u32, max_h: u32) -> RgbaImage {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return RgbaImage::new(1, 1);
    }
    let scale = (max_w as f64 / w as f64)
        .min(max_h as f64 / h as f64)
        .min(1.0);
    let nw = ((w as f64 * scale).round() as u32).max(1);
    let nh = ((h as f64 * scale).round() as u32).max(1);
    if (nw, nh) == (w, h) {
        img.to_rgba8()
    } else {
        image::imageops::resize(&img.to_rgba8(), nw, nh, FilterType::Triangle)
    }
}

/// The colours of one cell: upper and lower pixel (`None` when transparent).
type CellColours = (Option<[u8; 3]>, Option<[u8; 3]>);

/// Half blocks: each cell shows two pixels, the upper as foreground of `▀`, the lower as its
/// background. Without colour, a grey ramp of characters (dark pixels dense) instead.
pub fn blocks(
    img: &DynamicImage,
    cols: u32,
    max_lines: u32,
    color: bool,
    truecolor: bool,
) -> String {
    let px = fit(img, cols.max(1), max_lines.max(1) * 2);
    let (w, h) = px.dimensions();
    let mut out = String::new();
    let colour = |rgb: [u8; 3], bg: bool| -> String {
        let base = if bg { 48 } else { 38 };
        if truecolor {
            format!("\x1b[{base};2;{};{};{}m", rgb[0], rgb[1], rgb[2])
        } else {
            format!("\x1b[{base};5;{}m", ansi256(rgb))
        }
    };
    for row in (0..h).step_by(2) {
        let mut last: Option<CellColours> = None;
        for x in 0..w {
            let top = px.get_pixel(x, row).0;
            let bottom = if row + 1 < h {
                px.get_pixel(x, row + 1).0
            } else {
                [0, 0, 0, 0]
            };
            if !color {
                let lum = (luminance(top) + luminance(bottom)) / 2.0;
                out.push(grey_char(lum));
                continue;
            }
            let t = (top[3] >= 128).then(|| [top[0], top[1], top[2]]);
            let b = (bottom[3] >= 128).then(|| [bottom[0], bottom[1], bottom[2]]);
            // Only emit colour changes, or a 640-pixel-wide plot costs ~40 bytes a cell.
            if last != Some((t, b)) {
                out.push_str("\x1b[0m");
                match (t, b) {
                    (Some(t), Some(b)) => {
                        out.push_str(&colour(t, false));
                        out.push_str(&colour(b, true));
                    }
                    (Some(t), None) => out.push_str(&colour(t, false)),
                    (None, Some(b)) => out.push_str(&colour(b, false)),
                    (None, None) => {}
                }
                last = Some((t, b));
            }
            out.push(match (t, b) {
                (Some(_), _) => '▀',
                (None, Some(_)) => '▄',
                (None, None) => ' ',
            });
        }
        if color {
            out.push_str("\x1b[0m");
        }
        out.push('\n');
    }
    out
}

fn luminance(p: [u8; 4]) -> f64 {
    if p[3] < 128 {
        return 255.0;
    }
    0.2126 * p[0] as f64 + 0.7152 * p[1] as f64 + 0.0722 * p[2] as f64
}

fn grey_char(lum: f64) -> char {
    // Light pixels are blank (plots are dark ink on white), dark ones dense.
    const RAMP: &[char] = &['@', '%', '#', '*', '+', '=', '-', ':', '.', ' '];
    let i = ((lum / 256.0) * RAMP.len() as f64) as usize;
    RAMP[i.min(RAMP.len() - 1)]
}

/// The nearest entry of the xterm 256-colour palette (cube or grey ramp).
fn ansi256(rgb: [u8; 3]) -> u8 {
    let [r, g, b] = rgb;
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    if max - min < 10 {
        // Grey ramp 232..=255 covers 8..238.
        if r < 5 {
            return 16;
        }
        if r > 246 {
            return 231;
        }
        return 232 + ((r as u16 - 8) * 24 / 231).min(23) as u8;
    }
    let q = |c: u8| ((c as u16 * 5 + 127) / 255) as u8;
    16 + 36 * q(r) + 6 * q(g) + q(b)
}

/// The kitty graphics protocol: PNG bytes, transmitted and shown at once (`a=T`), in 4096-byte
/// base64 pieces; `q=2` keeps the terminal from answering on our stdin.
pub fn kitty(png: &[u8], cols: Option<u32>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let bytes = b64.as_bytes();
    let mut out = String::new();
    let pieces: Vec<&[u8]> = bytes.chunks(4096).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let more = u8::from(i + 1 < pieces.len());
        let text = std::str::from_utf8(piece).unwrap_or_default();
        if i == 0 {
            let size = cols.map(|c| format!(",c={c}")).unwrap_or_default();
            let _ = write!(out, "\x1b_Ga=T,f=100,q=2{size},m={more};{text}\x1b\\");
        } else {
            let _ = write!(out, "\x1b_Gm={more};{text}\x1b\\");
        }
    }
    out.push('\n');
    out
}

/// iTerm2's inline image escape (any format the terminal can decode).
pub fn iterm(bytes: &[u8], cols: Option<u32>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let width = cols.map(|c| c.to_string()).unwrap_or_else(|| "auto".into());
    format!(
        "\x1b]1337;File=inline=1;size={};width={width};preserveAspectRatio=1:{b64}\x07\n",
        bytes.len()
    )
}

/// Sixel: the image quantised to a 6×6×6 colour cube, six pixel rows per band, one pass per
/// colour present in the band, with run-length encoding. Transparent pixels are left unpainted.
pub fn sixel(img: &DynamicImage, max_w: u32, max_h: u32) -> String {
    let px = fit(img, max_w.max(1), max_h.max(1));
    let (w, h) = px.dimensions();
    const NONE: u8 = u8::MAX;
    let q = |c: u8| ((c as u16 * 5 + 127) / 255) as u8;
    let idx: Vec<u8> = px
        .pixels()
        .map(|p| {
            if p.0[3] < 128 {
                NONE
            } else {
                36 * q(p.0[0]) + 6 * q(p.0[1]) + q(p.0[2])
            }
        })
        .collect();
    let mut used = [false; 216];
    for &i in &idx {
        if i != NONE {
            used[i as usize] = true;
        }
    }
    let mut out = String::new();
    // P2=1: pixels we do not paint keep the background.
    let _ = write!(out, "\x1bP0;1;0q\"1;1;{w};{h}");
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        let level = |v: usize| (v * 100 / 5) as u32;
        let _ = write!(
            out,
            "#{i};2;{};{};{}",
            level(i / 36),
            level((i / 6) % 6),
            level(i % 6)
        );
    }
    let mut row_bits = vec![0u8; w as usize];
    for band in (0..h).step_by(6) {
        let mut present = [false; 216];
        for y in band..(band + 6).min(h) {
            for x in 0..w {
                let i = idx[(y * w + x) as usize];
                if i != NONE {
                    present[i as usize] = true;
                }
            }
        }
        let mut first = true;
        for colour in (0..216).filter(|c| present[*c]) {
            row_bits.iter_mut().for_each(|b| *b = 0);
            for dy in 0..6 {
                let y = band + dy;
                if y >= h {
                    break;
                }
                for x in 0..w {
                    if idx[(y * w + x) as usize] == colour as u8 {
                        row_bits[x as usize] |= 1 << dy;
                    }
                }
            }
            if !first {
                out.push('$');
            }
            first = false;
            let _ = write!(out, "#{colour}");
            // Trailing empty sixels need not be sent.
            let end = row_bits.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
            let mut x = 0;
            while x < end {
                let b = row_bits[x];
                let mut run = 1;
                while x + run < end && row_bits[x + run] == b {
                    run += 1;
                }
                let ch = (63 + b) as char;
                if run >= 4 {
                    let _ = write!(out, "!{run}{ch}");
                } else {
                    for _ in 0..run {
                        out.push(ch);
                    }
                }
                x += run;
            }
        }
        out.push('-');
    }
    out.push_str("\x1b\\\n");
    out
}

/// PNG bytes for protocols that want PNG (kitty): as given when already PNG, else re-encoded.
pub fn as_png(bytes: &[u8], img: &DynamicImage) -> Option<Vec<u8>> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(bytes.to_vec());
    }
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).ok()?;
    Some(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn sample() -> DynamicImage {
        let mut img = RgbaImage::new(20, 12);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = if x < 10 {
                image::Rgba([255, 0, 0, 255])
            } else if y < 6 {
                image::Rgba([0, 0, 255, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            };
        }
        DynamicImage::ImageRgba8(img)
    }

    #[test]
    fn detection() {
        assert_eq!(
            detect(&env_of(&[("TERM", "xterm-kitty")]), true, true),
            ImageMode::Kitty
        );
        assert_eq!(
            detect(
                &env_of(&[("KITTY_WINDOW_ID", "1"), ("TMUX", "/tmp/x")]),
                true,
                true
            ),
            ImageMode::Path
        );
        assert_eq!(
            detect(&env_of(&[("TERM_PROGRAM", "iTerm.app")]), true, true),
            ImageMode::Iterm
        );
        assert_eq!(
            detect(&env_of(&[("TERM", "foot")]), true, true),
            ImageMode::Sixel
        );
        assert_eq!(
            detect(&env_of(&[("TERM", "xterm-256color")]), true, true),
            ImageMode::Blocks
        );
        assert_eq!(
            detect(&env_of(&[("TERM", "xterm-256color")]), true, false),
            ImageMode::Path
        );
        assert_eq!(
            detect(&env_of(&[("TERM", "screen-256color")]), true, true),
            ImageMode::Path
        );
        assert_eq!(
            detect(&env_of(&[("TERM", "xterm-kitty")]), false, true),
            ImageMode::Path
        );
    }

    #[test]
    fn half_blocks_scale_and_colour() {
        let out = blocks(&sample(), 10, 100, true, true);
        // 20x12 scaled to 10 wide is 10x6 pixels: 3 lines of cells.
        assert_eq!(out.lines().count(), 3);
        assert!(out.contains("\x1b[38;2;255;0;0m"));
        assert!(out.contains('▀'));
        let plain = blocks(&sample(), 20, 100, false, false);
        assert_eq!(plain.lines().count(), 6);
        assert!(!plain.contains('\x1b'));
        let out256 = blocks(&sample(), 20, 100, true, false);
        assert!(out256.contains("\x1b[38;5;196m"), "{out256:?}");
    }

    #[test]
    fn sixel_shape() {
        let s = sixel(&sample(), 100, 100);
        assert!(s.starts_with("\x1bP0;1;0q\"1;1;20;12"));
        assert!(s.ends_with("\x1b\\\n"));
        // Red is cube index 180, blue 5.
        assert!(s.contains("#180;2;100;0;0"));
        assert!(s.contains("#5;2;0;0;100"));
        // Two bands of six rows.
        assert_eq!(s.matches('-').count(), 2);
        // The red half of the first band is a run of ten full sixels.
        assert!(s.contains("#180!10~"), "{s}");
    }

    #[test]
    fn kitty_and_iterm_escapes() {
        let png = vec![0u8; 5000];
        let k = kitty(&png, Some(40));
        assert!(k.starts_with("\x1b_Ga=T,f=100,q=2,c=40,m=1;"));
        assert!(k.contains("\x1b_Gm=0;"));
        let i = iterm(b"abc", None);
        assert!(i.starts_with("\x1b]1337;File=inline=1;size=3;width=auto"));
        assert!(i.contains(":YWJj\x07"));
    }

    #[test]
    fn palette_mapping() {
        assert_eq!(ansi256([255, 0, 0]), 196);
        assert_eq!(ansi256([0, 0, 0]), 16);
        assert_eq!(ansi256([255, 255, 255]), 231);
        assert!((232..=255).contains(&ansi256([128, 128, 128])));
    }
}
