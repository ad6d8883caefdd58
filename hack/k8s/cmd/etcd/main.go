// Command etcd is etcd's own main (etcdmain.Main), built from the go.etcd.io/etcd/server/v3
// module because the repository-root etcd module is not consumable as a plain dependency here.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
