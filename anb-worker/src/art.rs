//! The ANB artwork (logo, watermark, bumper card), drawn in code.
//!
//! The artwork is the project's own: an orange basketball beside the letters
//! "ANB" in a blocky type. Drawing it from geometry keeps it resolution
//! independent and means no image file has to ship with the worker.

/// An 8-bit straight-alpha RGBA image, rows top to bottom, no padding.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbaImage {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl std::fmt::Debug for RgbaImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgbaImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl RgbaImage {
    /// A `width`×`height` image filled with one colour.
    pub fn filled(width: u32, height: u32, color: Rgba) -> Self {
        let pixels = color.0.repeat(width as usize * height as usize);
        Self {
            width,
            height,
            pixels,
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixel data: `width * height` RGBA quadruplets.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The colour at (`x`, `y`).
    pub fn pixel(&self, x: u32, y: u32) -> Rgba {
        let at = (y as usize * self.width as usize + x as usize) * 4;
        Rgba([
            self.pixels[at],
            self.pixels[at + 1],
            self.pixels[at + 2],
            self.pixels[at + 3],
        ])
    }

    fn blend(&mut self, x: u32, y: u32, color: Rgba, coverage: f32) {
        let at = (y as usize * self.width as usize + x as usize) * 4;
        let dst = &mut self.pixels[at..at + 4];
        // "Source over" compositing in straight alpha.
        let src_a = f32::from(color.0[3]) / 255.0 * coverage;
        let dst_a = f32::from(dst[3]) / 255.0;
        let out_a = src_a + dst_a * (1.0 - src_a);
        if out_a <= 0.0 {
            return;
        }
        for (channel, source) in dst.iter_mut().zip(color.0).take(3) {
            let mixed =
                (f32::from(source) * src_a + f32::from(*channel) * dst_a * (1.0 - src_a)) / out_a;
            *channel = mixed.round().clamp(0.0, 255.0) as u8;
        }
        dst[3] = (out_a * 255.0).round().clamp(0.0, 255.0) as u8;
    }
}

/// A straight-alpha RGBA colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgba(pub [u8; 4]);

/// The ANB orange of the ball.
pub const BALL_ORANGE: Rgba = Rgba([0xF2, 0x6B, 0x1D, 0xFF]);
/// The seams of the ball.
const SEAM: Rgba = Rgba([0x1A, 0x12, 0x0C, 0xFF]);
/// The letters.
const LETTER_WHITE: Rgba = Rgba([0xFF, 0xFF, 0xFF, 0xFF]);
/// The bumper card's background, a deep navy.
pub const BUMPER_NAVY: Rgba = Rgba([0x0B, 0x1F, 0x3A, 0xFF]);
/// The translucent plate behind the watermark, so it reads on bright footage.
const PLATE: Rgba = Rgba([0x00, 0x00, 0x00, 0x70]);

/// Height of the corner watermark on the 720p output, in pixels.
pub const WATERMARK_HEIGHT: u32 = 54;

/// The logo's proportions: width / height.
const LOGO_ASPECT: f32 = 3.1;

/// Subsamples per axis for anti-aliasing.
const SUPERSAMPLING: u32 = 3;

/// Blocky glyphs on a 5×7 grid, `#` filled.
const GLYPH_A: [&str; 7] = [
    ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
];
const GLYPH_N: [&str; 7] = [
    "#...#", "##..#", "##..#", "#.#.#", "#..##", "#..##", "#...#",
];
const GLYPH_B: [&str; 7] = [
    "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
];

/// The colour of the logo at a point of its unit box (x in 0..LOGO_ASPECT, y in 0..1),
/// or `None` where it is transparent.
fn logo_color_at(x: f32, y: f32) -> Option<Rgba> {
    // The ball: a circle in the left square with seams.
    let (cx, cy, r) = (0.5, 0.5, 0.47);
    let (dx, dy) = (x - cx, y - cy);
    let distance = (dx * dx + dy * dy).sqrt();
    if distance <= r {
        let seam_half_width = 0.028;
        let vertical = dx.abs() < seam_half_width;
        let horizontal = dy.abs() < seam_half_width;
        // Two curved seams: arcs of circles centred outside the ball, left and right.
        let arc_radius = 0.42;
        let left_arc = ((x - (cx - 0.62)).powi(2) + dy * dy).sqrt();
        let right_arc = ((x - (cx + 0.62)).powi(2) + dy * dy).sqrt();
        let curved = (left_arc - arc_radius).abs() < seam_half_width
            || (right_arc - arc_radius).abs() < seam_half_width;
        let rim = distance > r - seam_half_width * 1.2;
        return Some(if vertical || horizontal || curved || rim {
            SEAM
        } else {
            BALL_ORANGE
        });
    }
    // The letters: three 5×7 glyphs, each cell square, after the ball.
    let cell = 0.8 / 7.0;
    let top = 0.1;
    let first_left = 1.12;
    let glyph_advance = 6.0 * cell;
    let row = ((y - top) / cell).floor();
    if !(0.0..7.0).contains(&row) {
        return None;
    }
    for (index, glyph) in [GLYPH_A, GLYPH_N, GLYPH_B].iter().enumerate() {
        let left = first_left + index as f32 * glyph_advance;
        let column = ((x - left) / cell).floor();
        if (0.0..5.0).contains(&column) && glyph[row as usize].as_bytes()[column as usize] == b'#' {
            return Some(LETTER_WHITE);
        }
    }
    None
}

/// Paints the logo into `image` within the box at (`left`, `top`) of height `height`.
fn paint_logo(image: &mut RgbaImage, left: u32, top: u32, height: u32) {
    let width = (height as f32 * LOGO_ASPECT).round() as u32;
    let scale = 1.0 / height as f32;
    let samples = (SUPERSAMPLING * SUPERSAMPLING) as f32;
    for py in 0..height.min(image.height.saturating_sub(top)) {
        for px in 0..width.min(image.width.saturating_sub(left)) {
            // Average the colours of the covered subsamples.
            let mut sum = [0.0f32; 3];
            let mut covered = 0u32;
            for sy in 0..SUPERSAMPLING {
                for sx in 0..SUPERSAMPLING {
                    let x = (px as f32 + (sx as f32 + 0.5) / SUPERSAMPLING as f32) * scale;
                    let y = (py as f32 + (sy as f32 + 0.5) / SUPERSAMPLING as f32) * scale;
                    if let Some(color) = logo_color_at(x, y) {
                        covered += 1;
                        for (total, value) in sum.iter_mut().zip(color.0) {
                            *total += f32::from(value);
                        }
                    }
                }
            }
            if covered > 0 {
                let n = covered as f32;
                let color = Rgba([
                    (sum[0] / n).round() as u8,
                    (sum[1] / n).round() as u8,
                    (sum[2] / n).round() as u8,
                    0xFF,
                ]);
                image.blend(left + px, top + py, color, covered as f32 / samples);
            }
        }
    }
}

/// The corner watermark: the logo on a translucent rounded plate, `height` pixels tall.
pub fn watermark(height: u32) -> RgbaImage {
    let padding = (height / 8).max(2);
    let logo_height = height - 2 * padding;
    let width = (logo_height as f32 * LOGO_ASPECT).round() as u32 + 2 * padding;
    let mut image = RgbaImage::filled(width, height, Rgba([0, 0, 0, 0]));
    let corner = padding as f32 * 1.5;
    for y in 0..height {
        for x in 0..width {
            // Rounded corners: distance from the nearest inner corner centre.
            let nearest_x = (x as f32 + 0.5).clamp(corner, width as f32 - corner);
            let nearest_y = (y as f32 + 0.5).clamp(corner, height as f32 - corner);
            let dx = x as f32 + 0.5 - nearest_x;
            let dy = y as f32 + 0.5 - nearest_y;
            let coverage = (corner + 0.5 - (dx * dx + dy * dy).sqrt()).clamp(0.0, 1.0);
            if coverage > 0.0 {
                image.blend(x, y, PLATE, coverage);
            }
        }
    }
    paint_logo(&mut image, padding, padding, logo_height);
    image
}

/// The full-frame bumper card: the logo centred on navy, with an orange rule below it.
pub fn bumper_card(width: u32, height: u32) -> RgbaImage {
    let mut image = RgbaImage::filled(width, height, BUMPER_NAVY);
    let logo_height = height * 2 / 7;
    let logo_width = (logo_height as f32 * LOGO_ASPECT).round() as u32;
    let left = width.saturating_sub(logo_width) / 2;
    let top = height.saturating_sub(logo_height) / 2;
    paint_logo(&mut image, left, top, logo_height);
    let rule_top = top + logo_height + height / 20;
    let rule_height = (height / 90).max(2);
    for y in rule_top..(rule_top + rule_height).min(height) {
        for x in left..(left + logo_width).min(width) {
            image.blend(x, y, BALL_ORANGE, 1.0);
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_translucent_around_and_opaque_on_the_ball() {
        let mark = watermark(60);
        assert_eq!(mark.height(), 60);
        assert!(mark.width() > 150, "wide enough for ball and letters");
        // The very corner is outside the rounded plate.
        assert_eq!(mark.pixel(0, 0).0[3], 0);
        // Between the ball and the letters only the plate shows.
        let plate = mark.pixel(mark.width() / 2, 3);
        assert!(plate.0[3] > 0 && plate.0[3] < 0xFF);
        // The ball's body is orange and opaque.
        let padding = 60 / 8;
        let ball_height = 60 - 2 * padding;
        let ball = mark.pixel(
            padding + ball_height * 33 / 100,
            padding + ball_height * 72 / 100,
        );
        assert_eq!(ball, BALL_ORANGE);
    }

    #[test]
    fn bumper_card_shows_the_logo_on_navy() {
        let card = bumper_card(1280, 720);
        assert_eq!((card.width(), card.height()), (1280, 720));
        assert_eq!(card.pixel(5, 5), BUMPER_NAVY);
        let white = (0..card.height())
            .flat_map(|y| (0..card.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| card.pixel(x, y) == LETTER_WHITE)
            .count();
        let orange = card
            .pixels()
            .chunks_exact(4)
            .filter(|p| *p == BALL_ORANGE.0)
            .count();
        assert!(white > 10_000, "letters are drawn ({white} white pixels)");
        assert!(
            orange > 10_000,
            "the ball is drawn ({orange} orange pixels)"
        );
    }
}
