//! The weir plugin SDK.
