//! Graph construction, validation, shape inference, folding and the file format.

use super::*;

fn ramp(shape: Vec<usize>) -> TensorBuf<f32> {
    let n = shape.iter().product::<usize>();
    TensorBuf::new(shape, (0..n).map(|i| i as f32 * 0.01 - 0.3).collect()).unwrap()
}

fn conv(out: usize, inp: usize, k: usize, stride: usize, groups: usize, bias: bool) -> Op {
    Op::Conv2d(Conv2d {
        weight: ramp(vec![out, inp / groups, k, k]),
        bias: bias.then(|| ramp(vec![out])),
        stride: [stride; 2],
        padding: [k / 2; 2],
        groups,
    })
}

fn linear(out: usize, inp: usize) -> Op {
    Op::Linear(Linear {
        weight: ramp(vec![out, inp]),
        bias: Some(ramp(vec![out])),
    })
}

fn batch_norm(channels: usize) -> Op {
    let values = |v: f32| TensorBuf::from_vec(vec![v; channels]);
    Op::BatchNorm(BatchNorm {
        gamma: ramp(vec![channels]),
        beta: values(0.25),
        mean: values(-0.5),
        var: values(4.0),
        eps: 0.0,
    })
}

fn chain_graph() -> FloatGraph {
    FloatGraph::chain(
        vec![3, 8, 8],
        vec![
            ("conv1".into(), conv(4, 3, 3, 1, 1, true)),
            ("relu1".into(), Op::Relu),
            ("pool1".into(), Op::MaxPool2d(Pool2d::square(2, 2))),
            ("flatten".into(), Op::Flatten),
            ("fc1".into(), linear(10, 64)),
        ],
    )
    .unwrap()
}

/// A residual block with a depthwise convolution, a concat and global pooling, given in
/// a shuffled order.
fn dag_nodes() -> Vec<Node> {
    vec![
        Node::new("fc", &["flatten"], linear(10, 16)),
        Node::new("stem", &[INPUT], conv(8, 3, 3, 2, 1, false)),
        Node::new("stem_bn", &["stem"], batch_norm(8)),
        Node::new("stem_relu", &["stem_bn"], Op::RELU6),
        Node::new("dw", &["stem_relu"], conv(8, 8, 3, 1, 8, true)),
        Node::new("dw_bn", &["dw"], batch_norm(8)),
        Node::new("add", &["dw_bn", "stem_relu"], Op::Add),
        Node::new("bn_after_add", &["add"], batch_norm(8)),
        Node::new("cat", &["bn_after_add", "stem_relu"], Op::Concat),
        Node::new("gap", &["cat"], Op::GlobalAvgPool),
        Node::new("flatten", &["gap"], Op::Flatten),
    ]
}

#[test]
fn chain_shapes() {
    let g = chain_graph();
    assert!(g.is_chain());
    assert_eq!(
        g.output_shapes(),
        [
            vec![4, 8, 8],
            vec![4, 8, 8],
            vec![4, 4, 4],
            vec![64],
            vec![10]
        ]
    );
    assert_eq!(g.output().name, "fc1");
    assert_eq!(g.shape(INPUT), Some(&[3, 8, 8][..]));
}

#[test]
fn dag_is_sorted_and_shaped() {
    let g = FloatGraph::new(vec![3, 9, 9], dag_nodes()).unwrap();
    let order: Vec<&str> = g.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        order,
        [
            "stem",
            "stem_bn",
            "stem_relu",
            "dw",
            "dw_bn",
            "add",
            "bn_after_add",
            "cat",
            "gap",
            "flatten",
            "fc"
        ]
    );
    assert!(!g.is_chain());
    assert_eq!(g.shape("stem"), Some(&[8, 5, 5][..]));
    assert_eq!(g.shape("cat"), Some(&[16, 5, 5][..]));
    assert_eq!(g.shape("gap"), Some(&[16, 1, 1][..]));
    assert_eq!(g.shape("fc"), Some(&[10][..]));
    let readers: Vec<&str> = g
        .consumers("stem_relu")
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(readers, ["dw", "add", "cat"]);
    let Op::Conv2d(dw) = &g.node("dw").unwrap().op else {
        panic!("dw is a convolution")
    };
    assert!(dw.is_depthwise());
}

fn error_of(nodes: Vec<Node>) -> GraphError {
    FloatGraph::new(vec![3, 9, 9], nodes).unwrap_err()
}

fn replace(name: &str, node: Node) -> Vec<Node> {
    dag_nodes()
        .into_iter()
        .map(|n| if n.name == name { node.clone() } else { n })
        .collect()
}

#[test]
fn bad_graphs_name_the_node() {
    let cycle = replace("stem_bn", Node::new("stem_bn", &["add"], batch_norm(8)));
    assert!(matches!(error_of(cycle), GraphError::Cycle { .. }));

    let unknown = replace(
        "dw",
        Node::new("dw", &["nowhere"], conv(8, 8, 3, 1, 8, true)),
    );
    let err = error_of(unknown);
    assert!(
        matches!(&err, GraphError::UnknownInput { node, input } if node == "dw" && input == "nowhere"),
        "{err}"
    );

    let mismatched = replace("add", Node::new("add", &["dw_bn", INPUT], Op::Add));
    let err = error_of(mismatched);
    assert!(
        err.to_string().contains("`add`") && err.to_string().contains("one shape"),
        "{err}"
    );

    let groups = replace(
        "dw",
        Node::new("dw", &["stem_relu"], conv(8, 8, 3, 1, 3, true)),
    );
    let err = error_of(groups);
    assert!(
        err.to_string().contains("`dw`") && err.to_string().contains("groups"),
        "{err}"
    );

    let arity = replace("add", Node::new("add", &["dw_bn"], Op::Add));
    assert!(matches!(error_of(arity), GraphError::Arity { got: 1, .. }));

    let duplicate = replace("dw_bn", Node::new("dw", &["dw"], batch_norm(8)));
    assert!(matches!(error_of(duplicate), GraphError::DuplicateName(n) if n == "dw"));
    let named_input = replace(
        "stem",
        Node::new(INPUT, &[INPUT], conv(8, 3, 3, 2, 1, false)),
    );
    assert!(matches!(
        error_of(named_input),
        GraphError::DuplicateName(_)
    ));

    let mut unused = dag_nodes();
    unused.push(Node::new("dangling", &["gap"], Op::Relu));
    assert!(matches!(error_of(unused), GraphError::Unused { node, .. } if node == "fc"));

    assert!(matches!(error_of(Vec::new()), GraphError::Empty));
    assert!(matches!(
        FloatGraph::new(vec![3, 0, 9], dag_nodes()),
        Err(GraphError::InputShape(_))
    ));
    assert!(matches!(
        FloatGraph::new(vec![1 << 20, 1 << 20, 1 << 20], dag_nodes()),
        Err(GraphError::InputShape(_))
    ));
}

#[test]
fn non_finite_weights_are_refused() {
    let mut nodes = dag_nodes();
    let Op::Linear(l) = &mut nodes[0].op else {
        panic!("fc is linear")
    };
    l.weight.data_mut()[3] = f32::NAN;
    let err = error_of(nodes);
    assert!(
        matches!(&err, GraphError::Value { node, .. } if node == "fc"),
        "{err}"
    );
    assert!(err.to_string().contains("weight[3]"), "{err}");

    let mut nodes = dag_nodes();
    let Op::BatchNorm(bn) = &mut nodes[2].op else {
        panic!("stem_bn is a batch-norm")
    };
    bn.var.data_mut()[0] = -1.0;
    assert!(error_of(nodes).to_string().contains("running_var[0]"));
}

#[test]
fn batch_norms_fold_into_layers_or_become_depthwise() {
    let g = FloatGraph::new(vec![3, 9, 9], dag_nodes()).unwrap();
    assert!(g.has_batch_norm());
    let folded = g.fold_batch_norms().unwrap();
    assert!(!folded.has_batch_norm());
    let names: Vec<&str> = folded.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stem",
            "stem_relu",
            "dw",
            "add",
            "bn_after_add",
            "cat",
            "gap",
            "flatten",
            "fc"
        ]
    );
    assert_eq!(folded.node("stem_relu").unwrap().inputs, ["stem"]);
    assert_eq!(folded.node("add").unwrap().inputs, ["dw", "stem_relu"]);

    // stem had no bias: W' = a W, b' = beta - a * mean with a = gamma / sqrt(var).
    let Op::BatchNorm(bn) = &g.node("stem_bn").unwrap().op else {
        panic!()
    };
    let affine = bn.affine();
    let (Op::Conv2d(before), Op::Conv2d(after)) = (
        &g.node("stem").unwrap().op,
        &folded.node("stem").unwrap().op,
    ) else {
        panic!()
    };
    let per_channel = before.weight.len() / 8;
    for (i, (&w0, &w1)) in before
        .weight
        .data()
        .iter()
        .zip(after.weight.data())
        .enumerate()
    {
        assert_eq!(w1, w0 * affine[i / per_channel].0);
    }
    let bias = after.bias.as_ref().unwrap().data();
    for c in 0..8 {
        assert_eq!(bias[c], affine[c].1);
        assert_eq!(affine[c].1, 0.25 - affine[c].0 * -0.5);
    }

    // After the add the batch-norm is a 1x1 depthwise convolution.
    let Op::Conv2d(dw) = &folded.node("bn_after_add").unwrap().op else {
        panic!("a batch-norm after an add becomes a convolution")
    };
    assert_eq!(dw.weight.shape(), [8, 1, 1, 1]);
    assert_eq!(dw.groups, 8);
    let scales: Vec<f32> = affine.iter().map(|a| a.0).collect();
    assert_eq!(dw.weight.data(), scales.as_slice());
}

#[test]
fn a_batch_norm_over_a_vector_without_a_layer_cannot_fold() {
    let g = FloatGraph::chain(
        vec![4],
        vec![
            ("bn".into(), {
                let Op::BatchNorm(mut bn) = batch_norm(4) else {
                    unreachable!()
                };
                bn.eps = 1e-5;
                Op::BatchNorm(bn)
            }),
            ("fc".into(), linear(2, 4)),
        ],
    );
    // [F] input to a batch-norm is fine in a training graph, but it cannot be folded.
    let err = g.unwrap().fold_batch_norms().unwrap_err();
    assert!(matches!(err, GraphError::Fold { node, .. } if node == "bn"));
}

#[test]
fn save_load_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (json, weights) = (dir.path().join("g.json"), dir.path().join("g.safetensors"));
    let g = FloatGraph::new(vec![3, 9, 9], dag_nodes()).unwrap();
    g.save(&json, &weights).unwrap();
    assert_eq!(FloatGraph::load(&json, &weights).unwrap(), g);
    let archive = crate::io::TensorArchive::open(&weights).unwrap();
    let names = archive.names().unwrap();
    assert!(names.contains(&"stem_bn.running_var".to_owned()));
    assert!(!names.contains(&"stem.bias".to_owned()), "{names:?}");

    let text = std::fs::read_to_string(&json).unwrap();
    let edit = |from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        std::fs::write(&json, text.replace(from, to)).unwrap();
        FloatGraph::load(&json, &weights).unwrap_err()
    };
    let err = edit("\"out_features\": 10", "\"out_features\": 11");
    assert!(
        err.to_string().contains("fc.weight") && err.to_string().contains("g.safetensors"),
        "{err}"
    );
    let err = edit("\"groups\": 8", "\"groups\": 8, \"dilation\": [2, 2]");
    assert!(
        err.to_string().contains("dilation") && err.to_string().contains("g.json"),
        "{err}"
    );
    let err = edit("\"format_version\": 2", "\"format_version\": 9");
    assert!(
        matches!(&err, GraphError::InFile { source, .. } if matches!(**source, GraphError::Version { found: 9 })),
        "{err}"
    );
    let err = edit("\"name\": \"dw_bn\"", "\"name\": \"dw\"");
    assert!(
        err.to_string().contains("`dw` is used twice") && err.to_string().contains("g.json"),
        "{err}"
    );
}

#[test]
fn version_1_chain_files_load_as_chains() {
    let dir = tempfile::tempdir().unwrap();
    let (json, weights) = (dir.path().join("g.json"), dir.path().join("g.safetensors"));
    let g = chain_graph();
    g.save(&json, &weights).unwrap();
    let v1 = r#"{
      "format_version": 1,
      "input_shape": [3, 8, 8],
      "nodes": [
        {"name": "conv1", "op": "conv2d", "in_channels": 3, "out_channels": 4, "kernel": 3, "stride": 1, "padding": 1},
        {"name": "relu1", "op": "relu"},
        {"name": "pool1", "op": "max_pool2d", "kernel": 2, "stride": 2},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc1", "op": "linear", "in_features": 64, "out_features": 10}
      ]
    }"#;
    std::fs::write(&json, v1).unwrap();
    assert_eq!(FloatGraph::load(&json, &weights).unwrap(), g);
    std::fs::write(
        &json,
        v1.replace("\"padding\": 1", "\"padding\": 1, \"dilation\": 2"),
    )
    .unwrap();
    assert!(FloatGraph::load(&json, &weights).is_err());
}
