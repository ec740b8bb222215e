//! Who wrote a file: the identity this node puts into the file meta groups it writes (the
//! files of a data directory, the instances a child receives). A leaf.

/// The Implementation Class UID this node writes into file meta groups.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.302143227262591287434591426338478069411";
/// The Implementation Version Name this node writes into file meta groups.
pub const IMPLEMENTATION_VERSION_NAME: &str = "DICOMNODE_RS_01";
