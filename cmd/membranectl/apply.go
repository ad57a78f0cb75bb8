package main

import (
	"errors"
	"fmt"
	"io"

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

func newApplyCommand() *cobra.Command {
	var path string
	var t target
	cmd := &cobra.Command{
		Use:   "apply -f FILE_OR_DIR",
		Short: "Create or update objects in a lab (or a datastore)",
		Long: `Apply validates the objects in FILE_OR_DIR together with those already
stored and writes all of them or none. In a lab, new pods are placed on a
node, given IPs, wired and started; deleted ones are torn down; and apply
returns once every agent enforces the result.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := datastore.DecodePath(path)
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
	cmd.Flags().StringVarP(&path, "filename", "f", "", "YAML file or directory")
	cmd.MarkFlagRequired("filename")
	t.addFlags(cmd)
	return cmd
}

func newDeleteCommand() *cobra.Command {
	var path string
	var t target
	var opts datastore.DeleteOptions
	cmd := &cobra.Command{
		Use:   "delete -f FILE_OR_DIR",
		Short: "Delete the objects named in FILE_OR_DIR from a lab (or a datastore)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := datastore.DecodePath(path)
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
	cmd.Flags().StringVarP(&path, "filename", "f", "", "YAML file or directory")
	cmd.MarkFlagRequired("filename")
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
	before := storedKeys(store)
	if _, err := store.Apply(objs); err != nil {
		return nil, err
	}
	var changes []lab.Change
	for _, o := range objs {
		action := "created"
		if before[o.Key] {
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
	var changes []lab.Change
	for k := range before {
		if !after[k] {
			changes = append(changes, lab.Change{Key: k, Action: "deleted"})
		}
	}
	return changes, nil
}

func storedKeys(s *datastore.Store) map[datastore.Key]bool {
	objs, _, _ := s.List()
	keys := make(map[datastore.Key]bool, len(objs))
	for _, o := range objs {
		keys[o.Key] = true
	}
	return keys
}
