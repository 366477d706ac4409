package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/godqlite/dqlite"
)

// recoverCmd runs "dqlite recover": dqlite.Recover on a stopped node's
// data directory.
func recoverCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dqlite recover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "the stopped node's data directory")
	members := fs.String("members", "", "the survivors, this node included: ID=ADDRESS,ID=ADDRESS,…")
	id := fs.Uint64("id", 0, "the node's ID (default: the one its directory records)")
	show := fs.Bool("show", false, "only print what the directory holds: its node's ID, its last Raft entry and members")
	certFile := fs.String("cert", "", "the node's certificate (PEM), when the cluster uses TLS")
	keyFile := fs.String("key", "", "the node's key (PEM)")
	caFile := fs.String("ca", "", "the cluster's CA certificate (PEM)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: dqlite recover -dir DIR -members ID=ADDRESS,… [-id ID]
       dqlite recover -dir DIR -show

When a cluster lost a majority of its voters for good, makes the survivors
(one or two) a new cluster: run it, with the same -members, on each while
its node is stopped, then start them, then add new nodes (.add). With more
than two survivors, recover the one whose last entry is the most recent
(the highest term, then index: -show prints them) and one other, and add
the others as new nodes with empty directories. It refuses while the old
cluster still works.

flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *show && *dir != "" && fs.NArg() == 0 {
		st, err := dqlite.Inspect(*dir)
		if err != nil {
			fmt.Fprintf(stderr, "dqlite recover: %v\n", err)
			return 1
		}
		var ms []string
		for _, m := range st.Members {
			ms = append(ms, fmt.Sprintf("%d=%s", m.ID, m.Address))
		}
		fmt.Fprintf(stdout, "node %d: last entry term %d, index %d; members %s\n", st.ID, st.LastTerm, st.LastIndex, strings.Join(ms, ","))
		return 0
	}
	if *dir == "" || *members == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	var peers []dqlite.Peer
	for _, m := range strings.Split(*members, ",") {
		k, addr, ok := strings.Cut(strings.TrimSpace(m), "=")
		v, err := strconv.ParseUint(k, 10, 64)
		if !ok || err != nil || v == 0 || addr == "" {
			fmt.Fprintf(stderr, "dqlite recover: -members: %q is not ID=ADDRESS\n", m)
			return 2
		}
		peers = append(peers, dqlite.Peer{ID: dqlite.NodeID(v), Address: addr})
	}
	tlsCfg, err := loadTLS(*certFile, *keyFile, *caFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	cfg := dqlite.Config{ID: dqlite.NodeID(*id), Dir: *dir, TLS: tlsCfg}
	if err := dqlite.Recover(ctx, cfg, peers); err != nil {
		fmt.Fprintf(stderr, "dqlite recover: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "recovered %s: its node is a member of a new cluster of %d (%s).\n"+
		"Run the same command on the other survivor if there is one, start them, then add new nodes with .add.\n",
		*dir, len(peers), *members)
	return 0
}
