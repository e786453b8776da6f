//! The float side of cinder: CNNs written in burn, their training and evaluation,
//! BatchNorm folding, and the export of trained weights as a backend-neutral float graph.
