//! The search on a real model: the held-out split, the per-layer sensitivity and cost
//! table at every width, and the greedy allocation of [`cinder_ptq::mixed`] with every
//! candidate converted and run on the int8 runtime (held-out accuracy, model bytes, batch
//! latency).

use std::collections::BTreeMap;
use std::path::Path;

use cinder_datasets::{Dataset, Normalization};
use cinder_model::GraphNet;
use cinder_model::data::epoch_order;
use cinder_observers::CalibrationTable;
use cinder_ptq::mixed::{
    self, Allocation, GreedyOptions, LayerTable, MeasureError, Search, Target, Width,
};
use cinder_runtime::model::codes_per_byte;
use cinder_runtime::{LayerOverride, Mode, QuantConfig, QuantizedModel, SessionOptions, convert};
use cinder_tensor::Tensor;
use cinder_tensor::graph::FloatGraph;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dataset::DatasetImages;
use crate::evaluate::{correct, median_ms, predict};
use crate::sensitivity::{Probe, weight_sensitivity};

#[derive(Debug, Error)]
pub enum AutoquantError {
    #[error(
        "held-out split: {wanted} images asked for, {available} training images left after \
         the {excluded} used for calibration (expected at least 1)"
    )]
    EmptySplit {
        wanted: usize,
        available: usize,
        excluded: usize,
    },
    #[error("the base config quantizes no weighted layer: nothing to allocate")]
    NoLayers,
}

/// The held-out split: `n` training images in a seeded order, never the test split.
/// When the model trained on only the first `trained` images of `train`, they come from
/// the rest (`unseen`); otherwise from the images after the first `calibration` of the
/// calibration's seeded order (the calibration images stay out).
pub struct HeldOut {
    pub data: Dataset,
    /// Whether the model never trained on these images.
    pub unseen: bool,
}

pub fn held_out(
    train: &Dataset,
    trained: usize,
    calibration: usize,
    n: usize,
    seed: u64,
) -> Result<HeldOut, AutoquantError> {
    let unseen = trained < train.len();
    let indices: Vec<usize> = if unseen {
        let rest = epoch_order(seed, 0, train.len() - trained);
        rest.into_iter().take(n).map(|i| trained + i).collect()
    } else {
        let order = epoch_order(seed, 0, train.len());
        order.into_iter().skip(calibration).take(n).collect()
    };
    if indices.is_empty() {
        return Err(AutoquantError::EmptySplit {
            wanted: n,
            available: train
                .len()
                .saturating_sub(if unseen { trained } else { calibration }),
            excluded: if unseen { 0 } else { calibration },
        });
    }
    Ok(HeldOut {
        data: train.subset(&indices),
        unseen,
    })
}

/// What a search works on.
pub struct Inputs<'a> {
    pub model: &'a GraphNet,
    pub graph: &'a FloatGraph,
    pub table: &'a CalibrationTable,
    /// Every setting but the layers' widths (W8A8 static by default).
    pub base: &'a QuantConfig,
    pub held_out: &'a Dataset,
    pub norm: Normalization,
    pub batch: usize,
    pub threads: usize,
    pub target: Target,
    pub options: GreedyOptions,
    /// Where each candidate model is written to be measured (then replaced).
    pub scratch: &'a Path,
}

/// A candidate as the runtime measured it on the held-out split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub accuracy: f64,
    pub model_bytes: u64,
    /// Median time of a held-out batch.
    pub batch_ms: f64,
}

/// The search's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Found {
    /// The float model's accuracy on the held-out split, the reference of every drop.
    pub fp32_accuracy: f64,
    pub table: Vec<LayerTable>,
    pub search: Search<Candidate>,
    pub config: QuantConfig,
}

/// `base` with each layer at its allocated width.
pub fn config_of(base: &QuantConfig, allocation: &Allocation) -> QuantConfig {
    allocation.iter().fold(base.clone(), |q, (layer, width)| {
        let mut o = q.layers.get(layer).copied().unwrap_or_default();
        match width {
            Width::Bits(b) => o.weight_bits = Some(*b),
            Width::Float => o.mode = Some(Mode::Float),
        }
        q.with_layer(layer.clone(), o)
    })
}

/// `base` with every layer's weights at `width`.
pub fn uniform(base: &QuantConfig, width: Width) -> QuantConfig {
    let mut q = base.clone();
    match width {
        Width::Bits(b) => q.default.weight_bits = b,
        Width::Float => q.default.mode = Mode::Float,
    }
    q.layers.values_mut().for_each(|o: &mut LayerOverride| {
        o.weight_bits = None;
        o.mode = None;
    });
    q
}

/// Sensitivity and cost table, then the greedy search.
pub fn run(inputs: &Inputs<'_>) -> anyhow::Result<Found> {
    let probe = Probe {
        model: inputs.model,
        graph: inputs.graph,
        images: DatasetImages {
            data: inputs.held_out,
            norm: inputs.norm,
        },
        batch: inputs.batch,
    };
    let fp32_accuracy = probe.float_accuracy()?;
    let table = layer_table(inputs, &probe, fp32_accuracy)?;
    let search = mixed::greedy(&table, &inputs.options, |allocation| {
        let candidate = measure(inputs, &config_of(inputs.base, allocation))
            .map_err(|e| MeasureError::from(format!("{e:#}")))?;
        let drop_pp = 100.0 * (fp32_accuracy - candidate.accuracy);
        eprintln!(
            "candidate: held-out {:.2}%, drop {drop_pp:+.2} pp, {} bytes, {:.2} ms per batch",
            100.0 * candidate.accuracy,
            candidate.model_bytes,
            candidate.batch_ms
        );
        Ok((drop_pp, candidate))
    })?;
    let config = config_of(inputs.base, &search.allocation);
    Ok(Found {
        fp32_accuracy,
        table,
        search,
        config,
    })
}

/// Each layer's predicted drop (weight sensitivity on the held-out split) and cost at
/// every width.
fn layer_table(
    inputs: &Inputs<'_>,
    probe: &Probe<'_>,
    fp32_accuracy: f64,
) -> anyhow::Result<Vec<LayerTable>> {
    let widths: Vec<Width> = inputs
        .options
        .widths
        .iter()
        .map(|&b| Width::Bits(b))
        .collect();
    let mut rows: BTreeMap<String, LayerTable> = BTreeMap::new();
    let mut order = Vec::new();
    for &width in &widths {
        eprintln!("sensitivity of every layer alone at {width}");
        for s in weight_sensitivity(probe, inputs.table, &uniform(inputs.base, width))? {
            let row = rows.entry(s.layer.clone()).or_insert_with(|| {
                order.push(s.layer.clone());
                LayerTable {
                    name: s.layer.clone(),
                    drop_pp: BTreeMap::new(),
                    cost: BTreeMap::new(),
                }
            });
            row.drop_pp
                .insert(width, 100.0 * (fp32_accuracy - s.accuracy));
        }
    }
    if order.is_empty() {
        return Err(AutoquantError::NoLayers.into());
    }
    let all: Vec<Width> = widths.iter().copied().chain([Width::Float]).collect();
    let costs = match inputs.target {
        Target::Size => size_costs(inputs.graph, &order, &all)?,
        Target::Latency => latency_costs(inputs, &all)?,
    };
    Ok(order
        .iter()
        .map(|name| {
            let mut row = rows.remove(name).expect("every ordered layer has a row");
            row.cost = all
                .iter()
                .map(|&w| (w, costs.get(&(name.clone(), w)).copied().unwrap_or(0.0)))
                .collect();
            row
        })
        .collect())
}

/// A layer's weight bytes at each width, as the model file stores them: one code per
/// byte for 5-8 bits, packed below (see `cinder_runtime::codes_per_byte`), four bytes a
/// float weight.
fn size_costs(
    graph: &FloatGraph,
    layers: &[String],
    widths: &[Width],
) -> anyhow::Result<BTreeMap<(String, Width), f64>> {
    let mut costs = BTreeMap::new();
    for layer in layers {
        let (weight, _) = graph
            .node(layer)
            .and_then(|n| n.op.weight_and_bias())
            .ok_or_else(|| anyhow::anyhow!("layer `{layer}` has no weight in the float graph"))?;
        let n = weight.data().len();
        for &w in widths {
            let bytes = match w {
                Width::Bits(b) => n.div_ceil(codes_per_byte(b)),
                Width::Float => 4 * n,
            };
            costs.insert((layer.clone(), w), bytes as f64);
        }
    }
    Ok(costs)
}

/// Profiled runs per width for the latency table.
const PROFILE_ROUNDS: usize = 9;

/// Each layer's median time per batch in the runtime's stage profile of the models with
/// every layer at each width, the models alternating run by run so that they share the
/// machine's load.
fn latency_costs(
    inputs: &Inputs<'_>,
    widths: &[Width],
) -> anyhow::Result<BTreeMap<(String, Width), f64>> {
    let batch = inputs.batch.min(inputs.held_out.len());
    let (x, _) = crate::evaluate::images(inputs.held_out, &inputs.norm, 0..batch)?;
    let models = widths
        .iter()
        .map(|&w| {
            Ok(convert(
                inputs.graph,
                inputs.table,
                &uniform(inputs.base, w),
            )?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = SessionOptions {
        threads: inputs.threads,
    };
    let mut sessions = models
        .iter()
        .map(|m| m.session_with(options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut samples: BTreeMap<(String, Width), Vec<f64>> = BTreeMap::new();
    for round in 0..=PROFILE_ROUNDS {
        for (session, &w) in sessions.iter_mut().zip(widths) {
            session.set_profiling(true);
            session.run(&x)?;
            if round == 0 {
                continue; // warm-up: first-run allocations
            }
            // A layer's stages (a float layer's, say) add up.
            let mut layer_ms: BTreeMap<String, f64> = BTreeMap::new();
            for stage in session.profile().unwrap_or_default() {
                *layer_ms.entry(stage.name).or_default() += stage.mean.as_secs_f64() * 1e3;
            }
            for (layer, ms) in layer_ms {
                samples.entry((layer, w)).or_default().push(ms);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|(key, mut ms)| {
            ms.sort_by(f64::total_cmp);
            (key, ms[ms.len() / 2])
        })
        .collect())
}

/// Converts `config`, writes the model to the scratch file (its size) and runs it on the
/// held-out split.
pub fn measure(inputs: &Inputs<'_>, config: &QuantConfig) -> anyhow::Result<Candidate> {
    let model = convert(inputs.graph, inputs.table, config)?;
    let (accuracy, model_bytes, batch_ms) = evaluate(
        &model,
        inputs.scratch,
        inputs.held_out,
        &inputs.norm,
        (inputs.batch, inputs.threads),
    )?;
    Ok(Candidate {
        accuracy,
        model_bytes,
        batch_ms,
    })
}

/// Saves `model` at `path` and runs it on `data`: accuracy, file bytes, median batch ms.
pub fn evaluate(
    model: &QuantizedModel,
    path: &Path,
    data: &Dataset,
    norm: &Normalization,
    (batch, threads): (usize, usize),
) -> anyhow::Result<(f64, u64, f64)> {
    model.save(path)?;
    let bytes = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .len();
    let mut session = model.session_with(SessionOptions { threads })?;
    let (x, _) = crate::evaluate::images(data, norm, 0..batch.min(data.len()))?;
    session.run(&x)?;
    let (predicted, times) = predict(&mut session, data, norm, batch)?;
    let accuracy = correct(&predicted, data) as f64 / data.len().max(1) as f64;
    Ok((accuracy, bytes, median_ms(times)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_datasets::IMAGE_LEN;

    /// `n` images whose first byte is their index.
    fn numbered(n: usize) -> Dataset {
        let mut images = vec![0u8; n * IMAGE_LEN];
        for i in 0..n {
            images[i * IMAGE_LEN] = i as u8;
        }
        Dataset::new(images, vec![0; n], vec!["a".into()]).unwrap()
    }

    fn ids(d: &Dataset) -> Vec<u8> {
        d.images().chunks_exact(IMAGE_LEN).map(|im| im[0]).collect()
    }

    #[test]
    fn the_held_out_split_avoids_training_or_calibration_images() {
        let train = numbered(100);
        let unseen = held_out(&train, 60, 10, 30, 7).unwrap();
        assert!(unseen.unseen);
        let got = ids(&unseen.data);
        assert_eq!(got.len(), 30);
        assert!(got.iter().all(|&i| i >= 60), "{got:?}");
        assert_eq!(ids(&held_out(&train, 60, 10, 30, 7).unwrap().data), got);
        assert_ne!(ids(&held_out(&train, 60, 10, 30, 8).unwrap().data), got);

        let seen = held_out(&train, 100, 10, 500, 7).unwrap();
        assert!(!seen.unseen);
        let calibration = crate::dataset::calibration_indices(100, 10, 7);
        let got = ids(&seen.data);
        assert_eq!(got.len(), 90);
        assert!(got.iter().all(|&i| !calibration.contains(&usize::from(i))));

        let e = held_out(&train, 100, 100, 5, 7).err().unwrap();
        assert!(matches!(e, AutoquantError::EmptySplit { .. }), "{e}");
        assert!(e.to_string().contains("5 images asked for"), "{e}");
    }

    #[test]
    fn allocations_become_per_layer_overrides_of_the_base() {
        let base = QuantConfig::default().with_layer(
            "fc2",
            LayerOverride {
                weight_bits: Some(6),
                ..Default::default()
            },
        );
        let allocation: Allocation = [
            ("conv1".to_owned(), Width::Bits(4)),
            ("fc2".to_owned(), Width::Float),
        ]
        .into();
        let q = config_of(&base, &allocation);
        assert_eq!(q.layer("conv1").weight_bits, 4);
        assert_eq!(q.layer("fc2").mode, Mode::Float);
        assert_eq!(q.layer("fc1"), base.layer("fc1"));
        let w2 = uniform(&base, Width::Bits(2));
        assert!(
            ["conv1", "fc2"]
                .iter()
                .all(|l| w2.layer(l).weight_bits == 2)
        );
        assert_eq!(uniform(&base, Width::Float).layer("fc2").mode, Mode::Float);
    }
}
