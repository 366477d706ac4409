// Command dqlite is the shell of a dqlite for Go cluster: an SQL prompt
// on one of its databases, from any machine that reaches a member, and
// the cluster's operations (members, leadership, dumps, backups,
// restores). "dqlite recover" makes the survivors of a cluster that lost
// its quorum for good a new cluster; "dqlite certs" makes a CA and
// certificates for mutual TLS (Config.TLS).
//
//	dqlite [flags] ADDRESS[,ADDRESS…] [DATABASE]
//	dqlite recover -dir DIR -members ID=ADDRESS,… [-id ID]
//	dqlite certs [-dir certs] [-hosts 127.0.0.1,localhost]
//
// With a terminal it is interactive (line editing, history in
// ~/.dqlite_history); otherwise it runs what stdin holds, or -c's text.
// .help lists the dot commands.
package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/godqlite/dqlite"
	"github.com/godqlite/dqlite/driver"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// terminal reports whether r is an interactive terminal; tests replace it.
var terminal = func(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// run is the whole program; it returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "recover" {
		return recoverCmd(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "certs" {
		return certsCmd(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("dqlite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	command := fs.String("c", "", "run this SQL or dot command, then exit")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to look for the leader before a statement fails")
	certFile := fs.String("cert", "", "client certificate (PEM), for a cluster with TLS")
	keyFile := fs.String("key", "", "client key (PEM)")
	caFile := fs.String("ca", "", "CA certificate (PEM) that signs the nodes' certificates")
	level := fs.String("level", "", `read level of queries: "" (the leader's copy as it is) or "linearizable" (confirmed by a quorum first)`)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: dqlite [flags] ADDRESS[,ADDRESS…] [DATABASE]\n"+
			"       dqlite recover -dir DIR -members ID=ADDRESS,… (dqlite recover -h)\n"+
			"       dqlite certs -dir DIR -hosts HOST,… (dqlite certs -h)\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fs.Usage()
		return 2
	}
	addrs := strings.Split(fs.Arg(0), ",")
	tlsCfg, err := loadTLS(*certFile, *keyFile, *caFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	var rl driver.ReadLevel
	switch *level {
	case "":
	case "linearizable":
		rl = driver.Linearizable
	default:
		fmt.Fprintf(stderr, "dqlite: unknown read level %q\n", *level)
		return 2
	}
	sh := &shell{ctx: ctx, addrs: addrs, name: fs.Arg(1), out: stdout, errOut: stderr, tls: tlsCfg,
		timer: *command == "" && terminal(stdin)}
	if tlsCfg != nil {
		sh.dial = driver.DialTLS(nil, tlsCfg)
	}
	if sh.name != "" {
		sh.db = sql.OpenDB(driver.NewRemoteConnector(addrs, sh.name,
			driver.RemoteOptions{TLS: tlsCfg, Timeout: *timeout, ReadLevel: rl}))
		defer sh.db.Close()
	}
	defer sh.closeConn()

	if *command != "" {
		for _, stmt := range splitInput(*command) {
			if !sh.do(stmt) {
				break
			}
		}
		return sh.status()
	}
	if terminal(stdin) {
		return sh.interactive(stdin)
	}
	return sh.script(stdin)
}

// splitInput cuts -c's text into dot commands and statements.
func splitInput(text string) []string {
	var out []string
	var sp splitter
	for _, line := range strings.Split(text, "\n") {
		out = append(out, sp.line(line)...)
	}
	return append(out, sp.rest()...)
}

func loadTLS(cert, key, ca string) (*tls.Config, error) {
	if cert == "" && key == "" && ca == "" {
		return nil, nil
	}
	if cert == "" || key == "" || ca == "" {
		return nil, errors.New("dqlite: TLS needs -cert, -key and -ca")
	}
	return dqlite.LoadTLS(cert, key, ca)
}
