// Command etcd is etcd's own server entry point, built from the etcd server
// module at the version kube-apiserver's release requires (go.mod), so the
// control plane needs no etcd package from the machine.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
