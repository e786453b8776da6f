//! After warm-up runs, a session does not allocate per run, on the calling thread or in
//! its helper threads (static, dynamic and float stages alike).
//!
//! A thread's scratch buffers grow the first time it takes its largest block of a stage.
//! Threads claim blocks as they come, and a helper joins a stage only when it is
//! scheduled in time, so that first time can fall after the warm-up: a few growths may
//! remain (bounded by the buffers of each thread), never one per run.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cinder_runtime::{ConvAlgorithm, Mode, SessionOptions};
use common::{ConvSpec, LayerChoice, ModelSpec, input};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn choice(mode: Mode) -> LayerChoice {
    LayerChoice {
        mode,
        bits: 8,
        per_channel: true,
        symmetric: false,
    }
}

#[test]
fn runs_after_warm_up_do_not_allocate() {
    let conv = |out, pool| ConvSpec {
        out,
        kernel: 3,
        stride: 1,
        padding: 1,
        relu: true,
        pool,
    };
    for modes in [
        [Mode::Static; 4],
        [Mode::Dynamic, Mode::Static, Mode::Float, Mode::Dynamic],
        [Mode::Float, Mode::Dynamic, Mode::Static, Mode::Static],
        // A float convolution after a static one, and a float last layer.
        [Mode::Static, Mode::Float, Mode::Static, Mode::Float],
    ] {
        let spec = ModelSpec {
            input: [3, 12, 12],
            // The second convolution can take Winograd (16 input channels): planned
            // with it below, and with im2col.
            convs: vec![conv(16, true), conv(16, true)],
            linears: vec![(32, true), (10, false)],
            choices: modes.iter().map(|&m| choice(m)).collect(),
            seed: 3,
        };
        let (graph, mut model) = spec.model().expect("the fixed models convert");
        for algorithm in [ConvAlgorithm::Winograd, ConvAlgorithm::Im2col] {
            model = model.with_conv_algorithm(algorithm).unwrap();
            let mut session = model.session_with(SessionOptions { threads: 2 }).unwrap();
            let (big, small) = (input(&graph, 8, 1), input(&graph, 1, 2));
            session.run(&big).unwrap();
            session.run(&small).unwrap();
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for _ in 0..630 {
                session.run(&big).unwrap();
                session.run(&small).unwrap();
            }
            let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
            assert!(
                allocated < 32,
                "{modes:?} {algorithm:?}: {allocated} allocations in {} runs",
                2 * 630
            );
        }
    }
}
