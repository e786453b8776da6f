//! Progress bars and epoch lines shared by the training commands (`train`, `qat`, the
//! experiment's training and fine-tuning cells).

use cinder_model::{EpochMetrics, Evaluation, StepProgress, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// A bar over the next epoch of `trainer` on `images` training images.
pub fn epoch_bar(trainer: &Trainer, images: usize) -> ProgressBar {
    let steps = images.div_ceil(trainer.config().batch_size);
    step_bar(
        steps,
        format!(
            "epoch {}/{}",
            trainer.epochs_done() + 1,
            trainer.config().epochs
        ),
    )
}

/// A bar over the `steps` optimizer steps of one epoch, named `prefix`.
pub fn step_bar(steps: usize, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// One line for a finished epoch: training figures, validation and test figures when
/// evaluated, speed.
pub fn epoch_line(m: &EpochMetrics) -> String {
    let held_out = |name: &str, e: Option<&Evaluation>| {
        e.map_or(String::new(), |e| {
            format!(
                " | {name} loss {:.4} acc {:.2}%",
                e.loss,
                100.0 * e.accuracy
            )
        })
    };
    let validation = held_out("validation", m.validation.as_ref());
    let test = held_out("test", m.test.as_ref());
    format!(
        "epoch {}: train loss {:.4} acc {:.2}%{validation}{test} | {:.1} img/s, {:.0} s",
        m.epoch,
        m.train_loss,
        100.0 * m.train_accuracy,
        m.images_per_sec,
        m.seconds
    )
}

/// Shows a step's running figures on `bar`.
pub fn show(bar: &ProgressBar, p: &StepProgress) {
    bar.set_position(p.step as u64);
    bar.set_message(format!(
        "loss {:.4} acc {:.1}% {:.1} img/s lr {:.2e}",
        p.running_loss,
        100.0 * p.running_accuracy,
        p.images_per_sec,
        p.lr
    ));
}
