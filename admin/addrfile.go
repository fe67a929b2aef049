package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"syscall"
)

// AddrFile is the file beside the journal where a running agent writes its
// admin address, so inspect, replay and pause find it.
func AddrFile(journal string) string { return journal + ".admin" }

// AddrInfo is the content of the address file.
type AddrInfo struct {
	Addr string `json:"addr"`
	PID  int    `json:"pid"`
	// Token is the token the agent generated for state-changing requests
	// when the operator configured none. The file is written mode 0600, so
	// only the agent's own user (who may stop it anyway) can replay through
	// the API; other users of a shared login node cannot.
	Token string `json:"token,omitempty"`
	// JournalID is the identity of the journal the agent holds; a CLI
	// checks the agent at Addr serves it before acting (a stale file).
	JournalID string `json:"journal_id,omitempty"`
}

// WriteAddrFile writes the address file atomically: temp, fsync, rename,
// readable by the owner only.
func WriteAddrFile(journal string, info AddrInfo) error {
	b, _ := json.Marshal(info)
	path := AddrFile(journal)
	tmp := path + ".tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("cannot write admin address file %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if e := f.Close(); err == nil {
		err = e
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot write admin address file %s: %w", path, err)
	}
	return nil
}

// ReadAddrFile reads the address file of the agent that holds journal.
// The file says where the command sends the operator's admin token, so
// one that another user could have written is refused: it must belong
// to the journal's owner (the agent's user), the user asking or root, and
// be writable by no one else, as WriteAddrFile leaves it.
func ReadAddrFile(journal string) (AddrInfo, error) {
	var info AddrInfo
	path := AddrFile(journal)
	f, err := os.Open(path)
	if err != nil {
		return info, fmt.Errorf("its admin address file %s cannot be read: %w", path, err)
	}
	defer f.Close()
	if err := trustAddrFile(f, path, journal); err != nil {
		return info, err
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return info, fmt.Errorf("its admin address file %s cannot be read: %w", path, err)
	}
	if err := json.Unmarshal(b, &info); err != nil || info.Addr == "" {
		return info, fmt.Errorf("its admin address file %s is damaged", path)
	}
	return info, nil
}

// trustAddrFile refuses an address file that someone other than the
// journal's owner wrote or may write.
func trustAddrFile(f *os.File, path, journal string) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("its admin address file %s cannot be read: %w", path, err)
	}
	if m := fi.Mode().Perm(); m&0o022 != 0 {
		return fmt.Errorf("its admin address file %s is writable by other users (mode %04o), so it may name someone else's address: not sending the admin token there (the agent writes it 0600; remove the file or restart the agent)", path, m)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	// Written by the journal's owner (its agent's user), by the user
	// asking, or by root: anyone else may have meant to catch the token.
	uid := st.Uid
	if uid == 0 || uid == uint32(os.Geteuid()) {
		return nil
	}
	if jfi, err := os.Stat(journal); err == nil {
		if jst, ok := jfi.Sys().(*syscall.Stat_t); ok && jst.Uid == uid {
			return nil
		}
	}
	return fmt.Errorf("its admin address file %s is owned by uid %d, neither the journal's owner nor you, so it may name someone else's address: not sending the admin token there", path, uid)
}
