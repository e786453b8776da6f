//! The synthetic CIFAR-style dataset: the default that needs no download.
//!
//! Ten classes of 3x32x32 images, each an object of class-specific structure on a
//! cluttered, noisy background. Classes are told apart by shape (disk, ring, square,
//! triangle, cross, bar), orientation (flat vs upright bar), texture (plain vs striped
//! disk, plain vs checkered square) or colour statistics only (warm vs cool square); the
//! distributions of neighbouring classes overlap more as `difficulty` grows, so that a
//! CNN neither reaches 100% nor stays near chance. Placement, scale, colour, background,
//! clutter, occlusion, colour jitter and noise are random.
//!
//! `difficulty` in `[0, 1]` scales noise, clutter, occlusion, colour jitter, scale and
//! placement ranges and the overlap of the paired classes. At 0 the pairs are disjoint;
//! at the default 0.5 half of the bar images (tilts of 30..60 degrees) and a fifth of
//! the warm/cool squares (shared hues) are drawn equally from both classes of their
//! pair, and textures may fade to nothing, so even an ideal classifier errs on about 7%
//! of the images; at 1 the two bar classes are indistinguishable.
//!
//! Image `i` of a split is a function of `(seed, split, i)` alone: any size, any order,
//! in parallel, and a smaller set is a prefix of a larger one. Labels cycle `i % 10`.

use std::f32::consts::{PI, TAU};

use rayon::prelude::*;

use crate::dataset::{CHANNELS, Dataset, IMAGE_LEN, PLANE, Splits, WIDTH};
use crate::error::DatasetError;
use crate::rng::Rng;

/// The synthetic classes in label order.
pub const SYNTHETIC_CLASSES: [&str; 10] = [
    "disk",
    "striped-disk",
    "ring",
    "warm-square",
    "cool-square",
    "checkered-square",
    "triangle",
    "cross",
    "flat-bar",
    "upright-bar",
];

/// The default `difficulty`: noise, clutter, jitter and class overlap at mid level.
pub const DEFAULT_DIFFICULTY: f32 = 0.5;

/// Size, seed and difficulty of a synthetic dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticSpec {
    pub train: usize,
    pub test: usize,
    pub seed: u64,
    /// In `[0, 1]`: 0 is clean and well separated, 1 is noisy, cluttered and overlapping.
    pub difficulty: f32,
}

impl Default for SyntheticSpec {
    /// CIFAR-10's sizes (50,000 + 10,000), seed 0, [`DEFAULT_DIFFICULTY`].
    fn default() -> Self {
        Self {
            train: 50_000,
            test: 10_000,
            seed: 0,
            difficulty: DEFAULT_DIFFICULTY,
        }
    }
}

/// Which split an image belongs to: the two draw from disjoint random streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

/// Generates the training and test splits of `spec`.
pub fn generate(spec: &SyntheticSpec) -> Result<Splits, DatasetError> {
    let generator = Generator::new(spec.seed, spec.difficulty)?;
    Ok(Splits {
        train: generator.dataset(Part::Train, spec.train)?,
        test: generator.dataset(Part::Test, spec.test)?,
    })
}

/// Renders synthetic images one at a time.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    seed: u64,
    difficulty: f32,
}

impl Generator {
    pub fn new(seed: u64, difficulty: f32) -> Result<Self, DatasetError> {
        if !(0.0..=1.0).contains(&difficulty) {
            return Err(DatasetError::invalid(
                "synthetic difficulty",
                difficulty,
                "a number in [0, 1]",
            ));
        }
        Ok(Self { seed, difficulty })
    }

    /// The label of image `index`.
    pub fn label(index: usize) -> u8 {
        (index % SYNTHETIC_CLASSES.len()) as u8
    }

    /// Renders image `index` of `part` into `out` (CHW) and returns its label.
    pub fn render(&self, part: Part, index: usize, out: &mut [u8; IMAGE_LEN]) -> u8 {
        let label = Self::label(index);
        let mut rng = Rng::derive(self.seed, &[part as u64, index as u64]);
        let scene = Scene::random(label, self.difficulty, &mut rng);
        let mut canvas = Canvas::background(&scene.background);
        for item in &scene.clutter {
            canvas.draw(item);
        }
        canvas.draw(&scene.object);
        if let Some(occluder) = &scene.occluder {
            canvas.draw(occluder);
        }
        canvas.finish(&scene.finish, &mut rng, out);
        label
    }

    /// The first `len` images of `part`, rendered in parallel.
    pub fn dataset(&self, part: Part, len: usize) -> Result<Dataset, DatasetError> {
        let mut images = vec![0u8; len * IMAGE_LEN];
        let (chunks, _) = images.as_chunks_mut::<IMAGE_LEN>();
        chunks.par_iter_mut().enumerate().for_each(|(i, out)| {
            self.render(part, i, out);
        });
        let labels = (0..len).map(Self::label).collect();
        Dataset::new(images, labels, SYNTHETIC_CLASSES.map(String::from).to_vec())
    }
}

type Rgb = [f32; CHANNELS];

#[derive(Debug, Clone, Copy)]
enum Shape {
    Disk,
    /// An annulus whose hole has this fraction of the outer radius.
    Ring(f32),
    Square,
    Triangle,
    Cross,
    Bar,
}

impl Shape {
    /// Signed distance (negative inside) in object units: the object spans radius ~1.
    fn distance(self, u: f32, v: f32) -> f32 {
        match self {
            Shape::Disk => (u * u + v * v).sqrt() - 1.0,
            Shape::Ring(hole) => {
                ((u * u + v * v).sqrt() - (1.0 + hole) / 2.0).abs() - (1.0 - hole) / 2.0
            }
            Shape::Square => u.abs().max(v.abs()) - 0.75,
            Shape::Triangle => {
                // Equilateral, circumradius 1: three edges at inradius 0.5.
                let (s, c) = (0.866_025_4, 0.5);
                (-v).max(s * u + c * v).max(-s * u + c * v) - 0.5
            }
            Shape::Cross => {
                let (a, b) = (u.abs(), v.abs());
                (a - 1.0).max(b - 0.3).min((a - 0.3).max(b - 1.0))
            }
            Shape::Bar => (u.abs() - 1.0).max(v.abs() - 0.22),
        }
    }

    /// Any shape, for clutter.
    fn random(rng: &mut Rng) -> Self {
        match rng.below(6) {
            0 => Shape::Disk,
            1 => Shape::Ring(rng.range(0.3, 0.6)),
            2 => Shape::Square,
            3 => Shape::Triangle,
            4 => Shape::Cross,
            _ => Shape::Bar,
        }
    }
}

/// A two-colour pattern in object-local pixel coordinates.
#[derive(Debug, Clone, Copy)]
enum Texture {
    Solid,
    Stripes { period: f32 },
    Checker { period: f32 },
}

impl Texture {
    /// 0 for the base colour, 1 for the accent colour.
    fn value(self, x: f32, y: f32) -> f32 {
        let half = |t: f32, p: f32| (t / p - (t / p).floor()) < 0.5;
        match self {
            Texture::Solid => 0.0,
            Texture::Stripes { period } => f32::from(u8::from(half(x, period))),
            Texture::Checker { period } => f32::from(u8::from(half(x, period) != half(y, period))),
        }
    }
}

/// A shape placed, rotated, scaled and painted.
#[derive(Debug, Clone, Copy)]
struct Object {
    shape: Shape,
    texture: Texture,
    cx: f32,
    cy: f32,
    radius: f32,
    angle: f32,
    color: Rgb,
    accent: Rgb,
}

/// A linear gradient between two colours.
#[derive(Debug, Clone, Copy)]
struct Background {
    from: Rgb,
    to: Rgb,
    /// Gradient per pixel along x and y.
    gx: f32,
    gy: f32,
}

/// Per-image colour jitter and noise, applied last.
#[derive(Debug, Clone, Copy)]
struct Finish {
    gain: Rgb,
    offset: f32,
    noise_std: f32,
}

struct Scene {
    background: Background,
    clutter: Vec<Object>,
    object: Object,
    occluder: Option<Object>,
    finish: Finish,
}

const WARM_HUE: f32 = 25.0;
const COOL_HUE: f32 = 215.0;

fn hsv(hue_deg: f32, s: f32, v: f32) -> Rgb {
    let h = hue_deg.rem_euclid(360.0) / 60.0;
    let f = |n: f32| {
        let k = (n + h) % 6.0;
        v - v * s * k.min(4.0 - k).clamp(0.0, 1.0)
    };
    [f(5.0), f(3.0), f(1.0)]
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * t)
}

impl Scene {
    fn random(label: u8, d: f32, rng: &mut Rng) -> Self {
        let object = class_object(label, d, rng);
        let value = object.color.iter().fold(0f32, |m, &c| m.max(c));
        let background = background(value, d, rng);
        let clutter = (0..rng.below(1 + (8.0 * d).round() as usize))
            .map(|_| clutter_object(d, rng))
            .collect();
        let occluder = rng.chance(0.5 * d).then(|| clutter_object(d, rng));
        let jitter = 0.3 * d;
        let finish = Finish {
            gain: [0; 3].map(|_| rng.range(1.0 - jitter, 1.0 + jitter)),
            offset: rng.range(-0.1, 0.1) * d,
            noise_std: (3.0 + 20.0 * d) / 255.0,
        };
        Self {
            background,
            clutter,
            object,
            occluder,
            finish,
        }
    }
}

/// The class object: shape, texture, orientation and colour by class, the rest random.
fn class_object(label: u8, d: f32, rng: &mut Rng) -> Object {
    let (shape, texture, hue_centre, angle) = match label {
        0 => (Shape::Disk, Texture::Solid, Some(WARM_HUE), None),
        1 => (Shape::Disk, stripes(rng), Some(WARM_HUE), None),
        2 => (
            Shape::Ring(rng.range(0.45 - 0.5 * d, 0.7)),
            Texture::Solid,
            None,
            None,
        ),
        3 => (Shape::Square, Texture::Solid, Some(WARM_HUE), None),
        4 => (Shape::Square, Texture::Solid, Some(COOL_HUE), None),
        5 => (Shape::Square, checker(rng), None, None),
        6 => (Shape::Triangle, Texture::Solid, None, None),
        7 => (Shape::Cross, Texture::Solid, None, None),
        8 => (Shape::Bar, Texture::Solid, None, Some(0.0)),
        _ => (Shape::Bar, Texture::Solid, None, Some(PI / 2.0)),
    };
    // Warm and cool hues spread +-(60 + 80d) degrees around centres 190 degrees apart:
    // disjoint at d = 0, 20% of each class in the shared hues at d = 0.5.
    let hue_spread = 60.0 + 80.0 * d;
    let hue = match hue_centre {
        Some(centre) => centre + rng.range(-hue_spread, hue_spread),
        None => rng.range(0.0, 360.0),
    };
    // Bars: orientation within +-(30 + 60d) degrees of flat or upright: disjoint at
    // d = 0, half of each class in the shared 30..60 degree tilts at d = 0.5.
    let tilt = (30.0 + 60.0 * d).to_radians();
    let angle = match angle {
        Some(a) => a + rng.range(-tilt, tilt),
        None => rng.range(0.0, TAU),
    };
    let saturation = rng.range(0.5 - 0.3 * d, 1.0);
    let color = hsv(hue, saturation, rng.range(0.35, 1.0));
    let accent = hsv(
        hue + rng.range(150.0, 210.0),
        saturation,
        rng.range(0.1, 1.0),
    );
    let offset = 2.0 + 4.0 * d;
    Object {
        shape,
        texture,
        cx: 16.0 + rng.range(-offset, offset),
        cy: 16.0 + rng.range(-offset, offset),
        radius: rng.range(7.0 - 2.0 * d, 11.0 + 2.0 * d),
        angle,
        color,
        // Texture contrast down to 0 (a plain object) from d = 0.5 on.
        accent: mix(color, accent, rng.range((0.6 - 1.2 * d).max(0.0), 1.0)),
    }
}

fn stripes(rng: &mut Rng) -> Texture {
    Texture::Stripes {
        period: rng.range(3.0, 6.0),
    }
}

fn checker(rng: &mut Rng) -> Texture {
    Texture::Checker {
        period: rng.range(3.0, 6.0),
    }
}

/// A small distractor of any shape and colour.
fn clutter_object(d: f32, rng: &mut Rng) -> Object {
    let color = hsv(rng.range(0.0, 360.0), rng.unit(), rng.range(0.1, 1.0));
    Object {
        shape: Shape::random(rng),
        texture: Texture::Solid,
        cx: rng.range(0.0, WIDTH as f32),
        cy: rng.range(0.0, WIDTH as f32),
        radius: rng.range(1.5, 2.5 + 3.0 * d),
        angle: rng.range(0.0, TAU),
        color,
        accent: color,
    }
}

/// A low-saturation gradient whose brightness stays apart from the object's by a gap
/// that narrows as `d` grows.
fn background(object_value: f32, d: f32, rng: &mut Rng) -> Background {
    let gap = rng.range(0.3 - 0.2 * d, 0.7);
    let darker = object_value - gap >= 0.05 && (object_value + gap > 1.0 || rng.chance(0.5));
    let value = if darker {
        object_value - gap
    } else {
        (object_value + gap).min(1.0)
    };
    let hue = rng.range(0.0, 360.0);
    let sat = rng.range(0.0, 0.5);
    let shade = rng.range(-(0.1 + 0.2 * d), 0.1 + 0.2 * d);
    let direction = rng.range(0.0, TAU);
    Background {
        from: hsv(hue, sat, value),
        to: hsv(
            hue + rng.range(-40.0, 40.0),
            sat,
            (value + shade).clamp(0.0, 1.0),
        ),
        gx: direction.cos() / WIDTH as f32,
        gy: direction.sin() / WIDTH as f32,
    }
}

/// A float CHW image in `[0, 1]`.
struct Canvas([f32; IMAGE_LEN]);

impl Canvas {
    fn background(bg: &Background) -> Self {
        let mut px = [0f32; IMAGE_LEN];
        let centre = WIDTH as f32 / 2.0;
        for i in 0..PLANE {
            let (x, y) = ((i % WIDTH) as f32 - centre, (i / WIDTH) as f32 - centre);
            let t = (0.5 + x * bg.gx + y * bg.gy).clamp(0.0, 1.0);
            for c in 0..CHANNELS {
                px[c * PLANE + i] = bg.from[c] + (bg.to[c] - bg.from[c]) * t;
            }
        }
        Self(px)
    }

    /// Paints `obj` with a one-pixel anti-aliased edge.
    fn draw(&mut self, obj: &Object) {
        let reach = obj.radius * 1.1 + 1.0;
        let span = |centre: f32| {
            let lo = (centre - reach).floor().max(0.0) as usize;
            let hi = ((centre + reach).ceil().max(0.0) as usize).min(WIDTH);
            lo..hi
        };
        let (sin, cos) = obj.angle.sin_cos();
        let inv = 1.0 / obj.radius;
        for y in span(obj.cy) {
            let dy = y as f32 + 0.5 - obj.cy;
            for x in span(obj.cx) {
                let dx = x as f32 + 0.5 - obj.cx;
                // Object-local pixel coordinates.
                let (lx, ly) = (dx * cos + dy * sin, dy * cos - dx * sin);
                let cover =
                    (0.5 - obj.shape.distance(lx * inv, ly * inv) * obj.radius).clamp(0.0, 1.0);
                if cover > 0.0 {
                    let color = mix(obj.color, obj.accent, obj.texture.value(lx, ly));
                    self.blend(y * WIDTH + x, color, cover);
                }
            }
        }
    }

    fn blend(&mut self, pixel: usize, color: Rgb, cover: f32) {
        for (c, &value) in color.iter().enumerate() {
            let p = &mut self.0[c * PLANE + pixel];
            *p += (value - *p) * cover;
        }
    }

    /// Colour jitter, noise (triangular, standard deviation `noise_std`) and rounding.
    fn finish(&self, f: &Finish, rng: &mut Rng, out: &mut [u8; IMAGE_LEN]) {
        // Sum of two uniform [0, 1) minus 1 has standard deviation 1/sqrt(6).
        let scale = f.noise_std * 6f32.sqrt() / 65536.0;
        for (pair, (src, dst)) in self
            .0
            .chunks_exact(2)
            .zip(out.chunks_exact_mut(2))
            .enumerate()
        {
            let gain = f.gain[pair * 2 / PLANE];
            let bits = rng.next_u64();
            for (k, (&p, o)) in src.iter().zip(dst.iter_mut()).enumerate() {
                let word = bits >> (32 * k);
                let noise = ((word & 0xffff) + ((word >> 16) & 0xffff)) as f32 - 65535.0;
                let v = p * gain + f.offset + noise * scale;
                *o = (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Normalization;

    #[test]
    fn deterministic_and_prefix_stable() {
        let g = Generator::new(3, 0.5).unwrap();
        let small = g.dataset(Part::Train, 20).unwrap();
        let large = g.dataset(Part::Train, 40).unwrap();
        assert_eq!(small, large.clone().limit(20));
        assert_eq!(small, g.dataset(Part::Train, 20).unwrap());
        assert_ne!(
            small,
            Generator::new(4, 0.5)
                .unwrap()
                .dataset(Part::Train, 20)
                .unwrap()
        );
        assert_ne!(small.images(), g.dataset(Part::Test, 20).unwrap().images());
        assert_eq!(large.class_histogram(), vec![4; 10]);
    }

    #[test]
    fn generate_sizes_and_difficulty_check() {
        let spec = SyntheticSpec {
            train: 30,
            test: 11,
            ..SyntheticSpec::default()
        };
        let s = generate(&spec).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (30, 11));
        assert_eq!(s.train.class_names()[9], "upright-bar");
        for bad in [-0.1, 1.5, f32::NAN] {
            assert!(Generator::new(0, bad).is_err());
        }
    }

    #[test]
    fn images_use_the_range_and_vary() {
        let d = Generator::new(0, DEFAULT_DIFFICULTY)
            .unwrap()
            .dataset(Part::Train, 200)
            .unwrap();
        let n = Normalization::fit(&d).unwrap();
        for c in 0..CHANNELS {
            assert!((0.25..0.75).contains(&n.mean[c]), "{n:?}");
            assert!((0.12..0.4).contains(&n.std[c]), "{n:?}");
        }
        let distinct: std::collections::HashSet<&[u8]> =
            d.images().chunks_exact(IMAGE_LEN).collect();
        assert_eq!(distinct.len(), 200);
    }

    #[test]
    fn shapes_are_inside_at_the_centre_and_outside_far_away() {
        let shapes = [
            Shape::Disk,
            Shape::Square,
            Shape::Triangle,
            Shape::Cross,
            Shape::Bar,
        ];
        for s in shapes {
            assert!(s.distance(0.0, 0.0) < 0.0, "{s:?}");
            assert!(
                s.distance(1.2, 0.0) > 0.0 && s.distance(0.0, -1.2) > 0.0,
                "{s:?}"
            );
        }
        let ring = Shape::Ring(0.5);
        assert!(ring.distance(0.0, 0.0) > 0.0 && ring.distance(0.75, 0.0) < 0.0);
    }

    #[test]
    fn hsv_primaries() {
        let close = |a: Rgb, b: Rgb| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]));
        assert!(close(hsv(120.0, 1.0, 1.0), [0.0, 1.0, 0.0]));
        assert!(close(hsv(240.0, 1.0, 0.5), [0.0, 0.0, 0.5]));
        assert!(close(hsv(-120.0, 0.0, 0.7), [0.7; 3]));
    }
}
