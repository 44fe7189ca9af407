// Command mkoci writes OCI image archives (an OCI image layout in a tar) from plain
// directories, so the test cluster gets its images without Docker or a registry: the
// archive goes straight into containerd with `ctr images import`.
//
//	mkoci layer -o base.tar.gz ROOTFS
//	    one gzip layer of ROOTFS's contents (owners and modes as on disk, every mtime
//	    0 so the same files give the same digest), plus base.tar.gz.diffid
//	mkoci image -o img.tar -name ramify.test/postgres:15 -layer base.tar.gz -layer DIR \
//	    [-user 999:999] [-env K=V]... [-entrypoint '["a"]'] [-cmd '["b"]'] [-workdir /]
//	    [-stopsignal SIGINT] [-expose 5432/tcp]... [-volume /data]... [-label k=v]...
//	    an image whose layers are the given layer files or directories, bottom first
//
// Identical layers get identical digests, so images sharing the Debian base layer
// store it once in containerd.
package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "layer":
		err = layerCmd(os.Args[2:])
	case "image":
		err = imageCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkoci %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mkoci layer -o OUT.tar.gz DIR | mkoci image -o OUT.tar -name REF -layer PATH... [config flags]")
	os.Exit(2)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func layerCmd(args []string) error {
	fl := flag.NewFlagSet("layer", flag.ExitOnError)
	out := fl.String("o", "", "output .tar.gz")
	_ = fl.Parse(args)
	if *out == "" || fl.NArg() != 1 {
		return errors.New("need -o OUT.tar.gz and exactly one directory")
	}
	_, err := writeLayer(fl.Arg(0), *out)
	return err
}

// writeLayer tars dir into a gzip file at out and records the uncompressed digest (the
// image config's diff_id) in out+".diffid".
func writeLayer(dir, out string) (string, error) {
	info, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !info.IsDir() {
		return "", fmt.Errorf("%s is not a directory", dir)
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp)
	bw := bufio.NewWriterSize(f, 1<<20)
	// Speed over size: the archive only travels from /var/tmp into containerd.
	gz, _ := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	raw := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, raw))
	if err := tarDir(tw, dir); err != nil {
		f.Close()
		return "", fmt.Errorf("archiving %s: %w", dir, err)
	}
	for _, c := range []io.Closer{tw, gz} {
		if err := c.Close(); err != nil {
			f.Close()
			return "", err
		}
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	diffID := "sha256:" + hex.EncodeToString(raw.Sum(nil))
	if err := os.WriteFile(out+".diffid", []byte(diffID+"\n"), 0o644); err != nil {
		return "", err
	}
	return diffID, os.Rename(tmp, out)
}

// tarDir writes every entry below root in lexical order with root-relative names.
func tarDir(tw *tar.Writer, root string) error {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{}
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == root {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat data", rel)
		}
		hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
		// Names would be looked up in the build host's passwd; the image has its own.
		hdr.Uname, hdr.Gname = "", ""
		hdr.ModTime = time.Unix(0, 0)
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		switch {
		case info.Mode().IsRegular() && st.Nlink > 1:
			key := inode{uint64(st.Dev), st.Ino}
			if first, dup := seen[key]; dup {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				seen[key] = hdr.Name
			}
		case info.Mode().IsRegular(), info.IsDir(), info.Mode()&fs.ModeSymlink != 0:
		default:
			return fmt.Errorf("%s: unsupported file type %s (device nodes and sockets do not belong in an image)", rel, info.Mode().Type())
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func imageCmd(args []string) error {
	fl := flag.NewFlagSet("image", flag.ExitOnError)
	out := fl.String("o", "", "output OCI archive (.tar)")
	name := fl.String("name", "", "image reference, e.g. ramify.test/postgres:15")
	user := fl.String("user", "", "default user, e.g. 999:999")
	workdir := fl.String("workdir", "", "working directory")
	stopSignal := fl.String("stopsignal", "", "stop signal, e.g. SIGINT")
	entrypoint := fl.String("entrypoint", "", "entrypoint as a JSON array")
	cmd := fl.String("cmd", "", "command as a JSON array")
	var layers, env, expose, volumes, labels listFlag
	fl.Var(&layers, "layer", "layer: a .tar.gz from `mkoci layer` or a directory (repeat, bottom first)")
	fl.Var(&env, "env", "environment variable K=V (repeat)")
	fl.Var(&expose, "expose", "exposed port, e.g. 5432/tcp (repeat)")
	fl.Var(&volumes, "volume", "volume path (repeat)")
	fl.Var(&labels, "label", "label k=v (repeat)")
	_ = fl.Parse(args)
	if *out == "" || *name == "" || len(layers) == 0 || fl.NArg() != 0 {
		return errors.New("need -o, -name and at least one -layer")
	}
	tag := *name
	if i := strings.LastIndex(tag, ":"); i > strings.LastIndex(tag, "/") {
		tag = tag[i+1:]
	} else {
		return fmt.Errorf("image name %q needs a tag (name:tag)", *name)
	}

	cfg := map[string]any{}
	if *user != "" {
		cfg["User"] = *user
	}
	if *workdir != "" {
		cfg["WorkingDir"] = *workdir
	}
	if *stopSignal != "" {
		cfg["StopSignal"] = *stopSignal
	}
	if len(env) > 0 {
		cfg["Env"] = []string(env)
	}
	for key, raw := range map[string]string{"Entrypoint": *entrypoint, "Cmd": *cmd} {
		if raw == "" {
			continue
		}
		var argv []string
		if err := json.Unmarshal([]byte(raw), &argv); err != nil {
			return fmt.Errorf("-%s must be a JSON array of strings: %w", strings.ToLower(key), err)
		}
		cfg[key] = argv
	}
	if m := setOf(expose); m != nil {
		cfg["ExposedPorts"] = m
	}
	if m := setOf(volumes); m != nil {
		cfg["Volumes"] = m
	}
	if len(labels) > 0 {
		lm := map[string]string{}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return fmt.Errorf("label %q is not k=v", l)
			}
			lm[k] = v
		}
		cfg["Labels"] = lm
	}

	tmpDir, err := os.MkdirTemp(filepath.Dir(*out), ".mkoci-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmpDir)

	type blob struct {
		path string
		desc descriptor
	}
	var blobs []blob
	var diffIDs []string
	var layerDescs []descriptor
	for i, l := range layers {
		path, diffID := l, ""
		if st, err := os.Stat(l); err != nil {
			return err
		} else if st.IsDir() {
			path = filepath.Join(tmpDir, fmt.Sprintf("layer%d.tar.gz", i))
			if diffID, err = writeLayer(l, path); err != nil {
				return err
			}
		} else {
			b, err := os.ReadFile(l + ".diffid")
			if err != nil {
				return fmt.Errorf("layer %s has no .diffid next to it (make it with `mkoci layer`): %w", l, err)
			}
			diffID = strings.TrimSpace(string(b))
		}
		d, err := fileDescriptor(path, mediaLayerGz)
		if err != nil {
			return err
		}
		blobs = append(blobs, blob{path, d})
		layerDescs = append(layerDescs, d)
		diffIDs = append(diffIDs, diffID)
	}

	epoch := time.Unix(0, 0).UTC().Format(time.RFC3339)
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch,
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
		"history":      []map[string]any{{"created": epoch, "created_by": "ramify e2e/cluster mkoci"}},
	})
	configDesc := bytesDescriptor(config, mediaConfig)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        configDesc,
		"layers":        layerDescs,
	})
	manifestDesc := bytesDescriptor(manifest, mediaManifest)
	manifestDesc.Annotations = map[string]string{
		// containerd's importer names the image after this one; other tools read the tag.
		"io.containerd.image.name":          *name,
		"org.opencontainers.image.ref.name": tag,
	}
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []descriptor{manifestDesc},
	})

	tmpOut := *out + ".tmp"
	f, err := os.Create(tmpOut)
	if err != nil {
		return err
	}
	defer os.Remove(tmpOut)
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put("index.json", index); err != nil {
		return err
	}
	if err := put(blobName(configDesc), config); err != nil {
		return err
	}
	if err := put(blobName(manifestDesc), manifest); err != nil {
		return err
	}
	written := map[string]bool{}
	for _, b := range blobs {
		if written[b.desc.Digest] {
			continue
		}
		written[b.desc.Digest] = true
		if err := tw.WriteHeader(&tar.Header{Name: blobName(b.desc), Mode: 0o644, Size: b.desc.Size, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		src, err := os.Open(b.path)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, src)
		src.Close()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmpOut, *out)
}

func setOf(items []string) map[string]struct{} {
	if len(items) == 0 {
		return nil
	}
	m := map[string]struct{}{}
	for _, i := range items {
		m[i] = struct{}{}
	}
	return m
}

func blobName(d descriptor) string {
	return "blobs/sha256/" + strings.TrimPrefix(d.Digest, "sha256:")
}

func bytesDescriptor(b []byte, mediaType string) descriptor {
	sum := sha256.Sum256(b)
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

func fileDescriptor(path, mediaType string) (descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return descriptor{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return descriptor{}, err
	}
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}
