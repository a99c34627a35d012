//! weir: the stream-processing host.
