package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

func init() { commands = append(commands, newApplyCommand, newDeleteCommand) }

// target is where apply and delete write: a running lab, or a bare
// datastore directory.
type target struct {
	lab       string
	datastore string
}

func (t *target) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&t.lab, "lab", "", "the lab to change (default: the only lab on this machine)")
	cmd.Flags().StringVar(&t.datastore, "datastore", "", "write to this datastore directory instead of a lab")
	cmd.MarkFlagsMutuallyExclusive("lab", "datastore")
}

// addFilenameFlag adds -f/--filename, which may be given several times.
func addFilenameFlag(cmd *cobra.Command, paths *[]string) {
	cmd.Flags().StringArrayVarP(paths, "filename", "f", nil, "YAML file or directory (repeat -f for several)")
	cmd.MarkFlagRequired("filename")
}

// decodeInput decodes the files and directories of -f as one input, and
// refuses input without objects, as kubectl does: an empty file or one of
// comments only is more likely a mistake than a request to do nothing.
// decode is datastore.DecodePaths, or DecodeKeys where only names count.
func decodeInput(verb string, decode func(...string) ([]datastore.Object, error), paths []string) ([]datastore.Object, error) {
	objs, err := decode(paths...)
	if err != nil {
		return nil, err
	}
	if len(objs) == 0 {
		var why []string
		for _, p := range paths {
			if fi, err := os.Stat(p); err == nil && fi.IsDir() {
				why = append(why, p+" has no .yaml, .yml or .json file with an object in it")
			} else {
				why = append(why, p+" is empty or holds only comments")
			}
		}
		return nil, fmt.Errorf("no objects passed to %s: %s", verb, strings.Join(why, "; "))
	}
	return objs, nil
}

func newApplyCommand() *cobra.Command {
	var paths []string
	var t target
	cmd := &cobra.Command{
		Use:   "apply -f FILE_OR_DIR [-f FILE_OR_DIR]...",
		Short: "Create or update objects in a lab (or a datastore)",
		Long: `Apply validates the objects in every FILE_OR_DIR together with those
already stored and writes all of them or none. Objects that are already
stored as given are left alone ("unchanged"); when nothing changes,
nothing is written. In a lab, new pods are placed on a node, given IPs,
wired and started; deleted ones are torn down; and apply returns once
every agent enforces the result.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := decodeInput("apply", datastore.DecodePaths, paths)
			if err != nil {
				return err
			}
			var changes []lab.Change
			if t.datastore != "" {
				changes, err = applyToDatastore(t.datastore, objs)
			} else {
				var l *lab.Lab
				if l, err = lab.OpenOnly(t.lab); err != nil {
					return err
				}
				l.SetLogger(logger(cmd))
				changes, err = l.Apply(cmd.Context(), objs)
			}
			printChanges(cmd.OutOrStdout(), changes)
			return err
		},
	}
	addFilenameFlag(cmd, &paths)
	t.addFlags(cmd)
	return cmd
}

func newDeleteCommand() *cobra.Command {
	var paths []string
	var t target
	var opts datastore.DeleteOptions
	cmd := &cobra.Command{
		Use:   "delete -f FILE_OR_DIR [-f FILE_OR_DIR]...",
		Short: "Delete the objects named in FILE_OR_DIR from a lab (or a datastore)",
		Long: `Delete removes the objects named in every FILE_OR_DIR, all of them or
none. It reads only what names each object (apiVersion, kind,
metadata.name and metadata.namespace), as kubectl delete -f does: a file
whose objects no longer validate still names them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := decodeInput("delete", datastore.DecodeKeys, paths)
			if err != nil {
				return err
			}
			keys := make([]datastore.Key, 0, len(objs))
			for _, o := range objs {
				keys = append(keys, o.Key)
			}
			var changes []lab.Change
			if t.datastore != "" {
				changes, err = deleteFromDatastore(t.datastore, keys, opts)
			} else {
				var l *lab.Lab
				if l, err = lab.OpenOnly(t.lab); err != nil {
					return err
				}
				l.SetLogger(logger(cmd))
				changes, err = l.Delete(cmd.Context(), keys, opts)
			}
			printChanges(cmd.OutOrStdout(), changes)
			return err
		},
	}
	addFilenameFlag(cmd, &paths)
	cmd.Flags().BoolVar(&opts.IgnoreNotFound, "ignore-not-found", false, "treat objects that do not exist as deleted")
	t.addFlags(cmd)
	return cmd
}

func printChanges(w io.Writer, changes []lab.Change) {
	for _, c := range changes {
		fmt.Fprintln(w, c)
	}
}

// applyToDatastore applies objs to a bare datastore (no lab to reconcile).
func applyToDatastore(dir string, objs []datastore.Object) ([]lab.Change, error) {
	store, err := datastore.Open(dir)
	if err != nil {
		return nil, err
	}
	existed := make(map[datastore.Key]bool, len(objs))
	for _, o := range objs {
		existed[o.Key] = store.Exists(o.Key)
	}
	_, written, err := store.ApplyReport(objs)
	if err != nil {
		return nil, err
	}
	var changes []lab.Change
	for _, o := range objs {
		action := "created"
		switch {
		case !written[o.Key]:
			action = "unchanged"
		case existed[o.Key]:
			action = "configured"
		}
		changes = append(changes, lab.Change{Key: o.Key, Action: action})
	}
	return changes, nil
}

// deleteFromDatastore deletes keys from a bare datastore.
func deleteFromDatastore(dir string, keys []datastore.Key, opts datastore.DeleteOptions) ([]lab.Change, error) {
	if len(keys) == 0 {
		return nil, errors.New("nothing to delete")
	}
	store, err := datastore.Open(dir)
	if err != nil {
		return nil, err
	}
	before := storedKeys(store)
	if _, err := store.Delete(keys, opts); err != nil {
		return nil, err
	}
	after := storedKeys(store)
	// In input order, like kubectl; then what the deletion took along
	// (a namespace's objects), sorted.
	var changes, along []lab.Change
	named := make(map[datastore.Key]bool, len(keys))
	for _, k := range keys {
		if before[k] && !after[k] && !named[k] {
			changes = append(changes, lab.Change{Key: k, Action: "deleted"})
		}
		named[k] = true
	}
	for k := range before {
		if !after[k] && !named[k] {
			along = append(along, lab.Change{Key: k, Action: "deleted"})
		}
	}
	slices.SortFunc(along, func(a, b lab.Change) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	return append(changes, along...), nil
}

func storedKeys(s *datastore.Store) map[datastore.Key]bool {
	objs, _, _ := s.List()
	keys := make(map[datastore.Key]bool, len(objs))
	for _, o := range objs {
		keys[o.Key] = true
	}
	return keys
}
