package driver

import "errors"

var errReadOnlyTx = errors.New("dqlite: write in a read-only transaction")

// mapErr replaces the I/O error SQLite reports for a failed replication by
// its real cause, which the VFS left with the database.
func (c *conn) mapErr(err error) error {
	if err == nil {
		return nil
	}
	if cause := c.db.TakeError(c.id); cause != nil {
		return cause
	}
	return err
}
