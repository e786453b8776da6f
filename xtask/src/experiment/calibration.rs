//! Calibration, once per observer: the table, its timing and the activation errors it
//! implies, computed on the first cell that needs them and kept for the others, in
//! memory and in `DIR/OBSERVER.json` (`OUT/calibration/` for the trained model) (reused while the model, the data and
//! the calibration settings are unchanged).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cinder_model::GraphNet;
use cinder_model::calibrate::{activation_errors, calibrate};
use cinder_observers::{CalibrationTable, Calibrator, ObserverSpec};
use cinder_tensor::{ErrorMetrics, QuantScheme};
use serde::{Deserialize, Serialize};

use super::config::CalibrationConfig;
use super::data::ExperimentData;
use super::results::CalibrationTime;
use super::store::{Key, read_cached, write_cached};
use crate::dataset::calibration_indices;

/// What one observer's calibration produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibrated {
    pub table: CalibrationTable,
    pub time: CalibrationTime,
    pub activation_errors: BTreeMap<String, ErrorMetrics>,
}

/// The calibrations of one model, by observer.
pub struct Calibrations<'a> {
    model: &'a GraphNet,
    data: &'a ExperimentData,
    config: &'a CalibrationConfig,
    dir: PathBuf,
    /// Key of the model, data and settings; the observer is added per table.
    key: String,
    done: BTreeMap<String, Calibrated>,
}

impl<'a> Calibrations<'a> {
    pub fn new(
        model: &'a GraphNet,
        graph_key: &str,
        data: &'a ExperimentData,
        config: &'a CalibrationConfig,
        dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let key = Key::new("calibration")
            .bytes(graph_key.as_bytes())
            .bytes(data.key.as_bytes())
            .json(config)?
            .hex();
        Ok(Self {
            model,
            data,
            config,
            dir,
            key,
            done: BTreeMap::new(),
        })
    }

    /// The calibration of `observer`, computed at most once.
    pub fn get(&mut self, observer: ObserverSpec) -> anyhow::Result<&Calibrated> {
        let name = observer.to_string();
        if !self.done.contains_key(&name) {
            let key = Key::new(&self.key).bytes(name.as_bytes()).hex();
            let path = self.dir.join(format!("{}.json", name.replace('=', "-")));
            let calibrated = match read_cached(&path, &key) {
                Some(c) => c,
                None => {
                    let c = self.run(observer)?;
                    write_cached(&path, &key, &c)?;
                    c
                }
            };
            self.done.insert(name.clone(), calibrated);
        }
        Ok(&self.done[&name])
    }

    fn run(&self, observer: ObserverSpec) -> anyhow::Result<Calibrated> {
        let c = self.config;
        let indices = calibration_indices(self.data.train.len(), c.images, c.seed);
        let images = self.data.train_images();
        let mut calibrator = Calibrator::new(observer, QuantScheme::activations_uint8())?;
        let timing = calibrate(self.model, &images, &indices, c.batch_size, &mut calibrator)?;
        let table = calibrator.table()?;
        let error_indices = &indices[..c.error_images.min(indices.len())];
        let errors = activation_errors(self.model, &images, error_indices, c.batch_size, &table)?;
        Ok(Calibrated {
            table,
            time: CalibrationTime {
                observer: observer.to_string(),
                images: timing.samples,
                forward_seconds: timing.forward.as_secs_f64(),
                observe_seconds: timing.observe.as_secs_f64(),
            },
            activation_errors: errors.metrics(),
        })
    }
}
