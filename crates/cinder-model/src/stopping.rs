//! Early stopping: training ends once the accuracy on a validation set (images held out
//! of the training data) has not improved for a number of epochs, so that a baseline is
//! trained to convergence rather than for a guessed number of epochs.
//! [`crate::TrainConfig::epochs`] stays the cap.
//!
//! The decision is a function of the metrics history alone, which checkpoints keep, so a
//! resumed run stops where the uninterrupted run would have.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::train::EpochMetrics;

/// When to stop before the epoch cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without a new best validation accuracy after which training stops.
    pub patience: usize,
    /// The rise in validation accuracy (a fraction: 0.001 is 0.1 percentage point) that
    /// counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

impl EarlyStopping {
    /// `patience` at least 1, `min_delta` finite and non-negative.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.patience == 0 {
            return Err(ModelError::Training(
                "early_stopping.patience = 0: expected at least 1".to_owned(),
            ));
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err(ModelError::Training(format!(
                "early_stopping.min_delta = {}: expected a finite non-negative number",
                self.min_delta
            )));
        }
        Ok(())
    }

    /// Whether a run with this `history` is done: its best epoch lies `patience` epochs
    /// back. Epochs without a validation result never stop the run.
    pub fn should_stop(&self, history: &[EpochMetrics]) -> bool {
        best_epoch(history, self.min_delta)
            .is_some_and(|best| history.len() - best >= self.patience)
    }
}

/// The 1-based epoch of `history` with the best validation accuracy, a later epoch
/// counting as better only when it beats the best so far by more than `min_delta`.
pub fn best_epoch(history: &[EpochMetrics], min_delta: f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for m in history {
        let Some(accuracy) = m.validation.as_ref().map(|v| v.accuracy) else {
            continue;
        };
        if best.is_none_or(|(_, b)| accuracy > b + min_delta) {
            best = Some((m.epoch, accuracy));
        }
    }
    best.map(|(epoch, _)| epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Evaluation;

    fn history(accuracies: &[f64]) -> Vec<EpochMetrics> {
        accuracies
            .iter()
            .enumerate()
            .map(|(i, &accuracy)| EpochMetrics {
                epoch: i + 1,
                lr: 0.1,
                train_loss: 1.0,
                train_accuracy: 0.5,
                train_images: 10,
                seconds: 1.0,
                images_per_sec: 10.0,
                validation: Some(Evaluation {
                    samples: 10,
                    loss: 1.0,
                    accuracy,
                    confusion: Vec::new(),
                }),
                test: None,
            })
            .collect()
    }

    #[test]
    fn stops_patience_epochs_after_the_best() {
        let rule = EarlyStopping {
            patience: 2,
            min_delta: 0.0,
        };
        assert!(!rule.should_stop(&history(&[0.5, 0.6, 0.7])));
        assert!(!rule.should_stop(&history(&[0.5, 0.7, 0.6])));
        assert!(rule.should_stop(&history(&[0.5, 0.7, 0.6, 0.7])));
        assert_eq!(best_epoch(&history(&[0.5, 0.7, 0.6, 0.7]), 0.0), Some(2));
    }

    #[test]
    fn a_rise_within_min_delta_is_no_improvement() {
        let rule = EarlyStopping {
            patience: 1,
            min_delta: 0.01,
        };
        assert!(rule.should_stop(&history(&[0.70, 0.705])));
        assert!(!rule.should_stop(&history(&[0.70, 0.72])));
    }

    #[test]
    fn epochs_without_validation_never_stop() {
        let mut h = history(&[0.5, 0.4, 0.3]);
        h.iter_mut().for_each(|m| m.validation = None);
        let rule = EarlyStopping {
            patience: 1,
            min_delta: 0.0,
        };
        assert!(!rule.should_stop(&h));
        assert_eq!(best_epoch(&h, 0.0), None);
    }

    #[test]
    fn bad_settings_are_named() {
        let zero = EarlyStopping {
            patience: 0,
            min_delta: 0.0,
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("patience")
        );
        let nan = EarlyStopping {
            patience: 1,
            min_delta: f64::NAN,
        };
        assert!(
            nan.validate()
                .unwrap_err()
                .to_string()
                .contains("min_delta")
        );
    }
}
