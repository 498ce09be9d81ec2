// Reading files of secrets (password_file, auth.users_file): only regular
// files, with safe permissions, of at most 1 MiB; and the auth.users
// entries' password_file read into their passwords.

package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// maxSecretFile bounds what is read of a file of secrets (password_file,
// auth.users_file): a path pointed at the wrong, huge file must fail, not
// fill memory.
const maxSecretFile = 1 << 20

// secretFileMode is the permission bits a file of secrets may not have:
// any access for others, and write or execute for the group. The group
// may read so that a Kubernetes secret volume with fsGroup and
// defaultMode 0440 (root:fsGroup, the only way a non-root container reads
// a root-owned secret without making it world-readable) is accepted;
// libpq's 0600 rule for ~/.pgpass would refuse every such mount.
const secretFileMode fs.FileMode = 0o037

// readSecretFile reads a file that holds passwords, refusing one that is
// not a regular file, grants more than secretFileMode allows, or is larger
// than maxSecretFile. Errors name the file and the problem, never its
// content; the caller prefixes the option.
func readSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileError(path, err)
	}
	defer f.Close()
	// Stat the open file, not the path: what is checked is what is read
	// (a Kubernetes secret is a symlink that a rotation re-points).
	fi, err := f.Stat()
	if err != nil {
		return nil, fileError(path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&secretFileMode != 0 {
		return nil, fmt.Errorf("%s has permissions %04o: a file of passwords must grant nothing to others "+
			"and at most read to its group (chmod 0600, or 0440 with a shared group; on Kubernetes set the "+
			"secret volume's defaultMode: 0400, or 0440 with the pod's fsGroup)", path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, fileError(path, err)
	}
	if len(data) > maxSecretFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: is it the right file?", path, maxSecretFile)
	}
	return data, nil
}

// fileError says what failed in the words an operator acts on.
func fileError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s cannot be read by this process (permission denied): give its user or group read access", path)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %v", path, pe.Err)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// readPasswordFile reads a password_file: its whole content is the
// password (or SCRAM verifier), less one trailing newline ("\n" or
// "\r\n"), as a mounted Kubernetes secret or `echo pw > file` leaves it.
// Spaces are kept: they may be part of the password.
func readPasswordFile(path string) (string, error) {
	data, err := readSecretFile(path)
	if err != nil {
		return "", err
	}
	pw := strings.TrimSuffix(string(data), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	switch {
	case pw == "":
		return "", fmt.Errorf("%s is empty: it must hold the password (or a SCRAM verifier)", path)
	case strings.ContainsAny(pw, "\r\n"):
		return "", fmt.Errorf("%s holds more than one line: a password_file holds one password (or SCRAM verifier); "+
			"a file of several logins is auth.users_file", path)
	}
	return pw, nil
}

// readPasswordFiles fills the password of each auth.users entry that names
// a password_file (again on every reload, so a rotated secret is picked
// up by SIGHUP). An entry sets password or password_file, not both.
func (a *AuthConfig) readPasswordFiles() error {
	var errs []string
	for i := range a.Users {
		u := &a.Users[i]
		if u.PasswordFile == "" {
			continue
		}
		key := fmt.Sprintf("config: auth.users[%d].password_file", i)
		if u.Password != "" {
			errs = append(errs, key+": set either password or password_file, not both")
			continue
		}
		pw, err := readPasswordFile(u.PasswordFile)
		if err != nil {
			errs = append(errs, key+": "+err.Error())
			continue
		}
		u.Password = pw
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}
