// Command etcd is the etcd server, built from the pinned go.etcd.io/etcd/server/v3
// module (the same entry point as upstream etcd's main.go).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
