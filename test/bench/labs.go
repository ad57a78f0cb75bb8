package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

// Helpers to build benchmark labs from typed objects.

func uniqueName(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func labObj(name string, nodes ...datastore.LabNode) datastore.Object {
	l := &datastore.Lab{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: datastore.LabSpec{Nodes: nodes}}
	l.APIVersion, l.Kind = "membrane.dev/v1alpha1", "Lab"
	return datastore.Object{Key: datastore.Key{Kind: "Lab", Name: name}, Obj: l}
}

func nsObj(name string, labels map[string]string) datastore.Object {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	n.APIVersion, n.Kind = "v1", "Namespace"
	return datastore.Object{Key: datastore.Key{Kind: "Namespace", Name: name}, Obj: n}
}

func podObj(ns, name, node string, labels map[string]string, containers ...corev1.Container) datastore.Object {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: containers}}
	p.APIVersion, p.Kind = "v1", "Pod"
	return datastore.Object{Key: datastore.Key{Kind: "Pod", Namespace: ns, Name: name}, Obj: p}
}

func npObj(np *networkingv1.NetworkPolicy) datastore.Object {
	np.APIVersion, np.Kind = "networking.k8s.io/v1", "NetworkPolicy"
	return datastore.Object{Key: datastore.Key{Kind: "NetworkPolicy", Namespace: np.Namespace, Name: np.Name}, Obj: np}
}

func tcpPort(n int) networkingv1.NetworkPolicyPort {
	p := intstr.FromInt32(int32(n))
	tcp := corev1.ProtocolTCP
	return networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &p}
}

func matchLabels(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

// upLab brings up a lab and returns a function that takes it down.
func upLab(b binaries, objs []datastore.Object, noAgent bool, agentArgs ...string) (*lab.Lab, func(), error) {
	name := ""
	for _, o := range objs {
		if lo, ok := o.Obj.(*datastore.Lab); ok {
			name = lo.Name
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Options{Objects: objs, Name: name, NoAgent: noAgent, AgentBinary: b.agent, ProxyBinary: b.proxy, ProxyArgs: b.proxyArgs, Executable: b.ctl, AgentArgs: agentArgs})
	if err != nil {
		lab.Down(context.Background(), name)
		return nil, nil, fmt.Errorf("lab up: %w", err)
	}
	return l, func() {
		if err := lab.Down(context.Background(), name); err != nil {
			fmt.Fprintln(os.Stderr, "bench: lab down:", err)
		}
	}, nil
}

func podIPv4(l *lab.Lab, ref string) (string, error) {
	p, err := l.Pod(ref)
	if err != nil {
		return "", err
	}
	ip, ok := p.IP(4)
	if !ok {
		return "", fmt.Errorf("pod %s has no IPv4 address", ref)
	}
	return ip.String(), nil
}
