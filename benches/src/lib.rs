//! Criterion benchmarks of cinder; the benchmark targets live in `benches/benches/`.
//! This library only holds inputs the benchmarks share.

/// A deterministic pseudo-random f32 tensor body in `[-scale, scale]` (xorshift), so
/// benchmarks need no RNG crate and every run measures the same data.
pub fn pseudo_random(len: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
