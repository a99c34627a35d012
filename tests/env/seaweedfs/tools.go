//go:build tools

// Package tools pins the SeaweedFS server that tests/stack builds into
// $WEIR_CACHE_DIR/seaweedfs/weed (`go build github.com/seaweedfs/seaweedfs/weed`
// here, against the versions go.mod and go.sum list).
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
