package datastore

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/membrane-mesh/membrane/identity"
)

// derivedLabelMessage says why a pod cannot carry label key k, which
// identity derives (identity.Derived), and what to do instead.
func derivedLabelMessage(k string) string {
	from, fix := "the labels of the pod's namespace", "; label the Namespace instead"
	switch k {
	case identity.LabelNamespace:
		from, fix = "metadata.namespace", ""
	case identity.LabelServiceAccount:
		from, fix = "spec.serviceAccountName", "; set that instead"
	case identity.LabelCluster:
		from, fix = "the agent's --cluster", ""
	}
	return fmt.Sprintf("%q is derived from %s, so a pod cannot carry it (policies would select the pod as if it were so)%s", k, from, fix)
}

// defaultPod fills in what the API server would: service account
// "default", TCP for ports without a protocol, and status.podIP and
// status.podIPs from each other.
func defaultPod(pod *corev1.Pod) {
	if pod.Spec.ServiceAccountName == "" {
		pod.Spec.ServiceAccountName = "default"
	}
	for i := range pod.Spec.Containers {
		for j := range pod.Spec.Containers[i].Ports {
			if pod.Spec.Containers[i].Ports[j].Protocol == "" {
				pod.Spec.Containers[i].Ports[j].Protocol = corev1.ProtocolTCP
			}
		}
	}
	st := &pod.Status
	if _, msg := parseIP(st.PodIP); msg == "" && len(st.PodIPs) == 0 {
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}
	if len(st.PodIPs) > 0 && st.PodIP == "" {
		if _, msg := parseIP(st.PodIPs[0].IP); msg == "" {
			st.PodIP = st.PodIPs[0].IP
		}
	}
}

func validatePod(pod *corev1.Pod) fieldErrors {
	fe := validateMeta(&pod.ObjectMeta, dns1123Subdomain, true)
	for _, k := range sortedKeys(pod.Labels) {
		if identity.Derived(k) {
			fe.add(path("metadata").child("labels").key(k), derivedLabelMessage(k))
		}
	}
	spec := path("spec")
	if pod.Spec.NodeName != "" {
		if msg := checkName(pod.Spec.NodeName, dns1123Subdomain); msg != "" {
			fe.add(spec.child("nodeName"), msg)
		}
	}
	if msg := checkName(pod.Spec.ServiceAccountName, dns1123Subdomain); msg != "" {
		fe.add(spec.child("serviceAccountName"), msg)
	}
	if len(pod.Spec.Containers) == 0 {
		fe.add(spec.child("containers"), "required; a Pod needs at least one container, whose command the lab runs")
	}
	containerNames := map[string]int{}
	portNames := map[string]path{}
	for i, c := range pod.Spec.Containers {
		cp := spec.child("containers").index(i)
		switch {
		case c.Name == "":
			fe.add(cp.child("name"), "required; give each container a name")
		default:
			if msgs := content.IsDNS1123Label(c.Name); len(msgs) > 0 {
				fe.add(cp.child("name"), fmt.Sprintf("%q is not a valid container name (it must be a DNS-1123 label): %s", c.Name, strings.Join(msgs, "; ")))
			}
			if prev, dup := containerNames[c.Name]; dup {
				fe.add(cp.child("name"), fmt.Sprintf("%q is also the name of containers[%d]; container names must be unique in a Pod", c.Name, prev))
			} else {
				containerNames[c.Name] = i
			}
		}
		for j, env := range c.Env {
			ep := cp.child("env").index(j)
			if env.Name == "" {
				fe.add(ep.child("name"), "required")
			} else if msgs := validation.IsRelaxedEnvVarName(env.Name); len(msgs) > 0 {
				fe.add(ep.child("name"), fmt.Sprintf("%q is not a valid environment variable name: %s", env.Name, strings.Join(msgs, "; ")))
			}
		}
		for j, port := range c.Ports {
			pp := cp.child("ports").index(j)
			if port.ContainerPort < 1 || port.ContainerPort > 65535 {
				fe.add(pp.child("containerPort"), fmt.Sprintf("%d is not a valid port number; use 1 to 65535", port.ContainerPort))
			}
			if msg := checkProtocol(string(port.Protocol)); msg != "" {
				fe.add(pp.child("protocol"), msg)
			}
			if port.Name == "" {
				continue
			}
			if msgs := validation.IsValidPortName(port.Name); len(msgs) > 0 {
				fe.add(pp.child("name"), fmt.Sprintf("%q is not a valid port name: %s", port.Name, strings.Join(msgs, "; ")))
			} else if prev, dup := portNames[port.Name]; dup {
				fe.add(pp.child("name"), fmt.Sprintf("%q is also the name of %s; port names must be unique in a Pod", port.Name, prev))
			} else {
				portNames[port.Name] = pp
			}
		}
	}
	fe = append(fe, validatePodStatus(&pod.Status)...)
	return fe
}

func validatePodStatus(st *corev1.PodStatus) fieldErrors {
	var fe fieldErrors
	status := path("status")
	var podIP netip.Addr
	if st.PodIP != "" {
		var msg string
		if podIP, msg = parseIP(st.PodIP); msg != "" {
			fe.add(status.child("podIP"), msg)
		}
	}
	families := map[bool]int{}
	for i, ip := range st.PodIPs {
		ipp := status.child("podIPs").index(i).child("ip")
		a, msg := parseIP(ip.IP)
		if msg != "" {
			fe.add(ipp, msg)
			continue
		}
		if i == 0 && podIP.IsValid() && a != podIP {
			fe.add(ipp, fmt.Sprintf("%s differs from status.podIP %s; podIPs[0] must be the same address as podIP", a, podIP))
		}
		if prev, dup := families[a.Is4()]; dup {
			fe.add(ipp, fmt.Sprintf("podIPs[%d] is already an %s address; a Pod has at most one IPv4 and one IPv6 address", prev, family(a)))
		} else {
			families[a.Is4()] = i
		}
	}
	if st.HostIP != "" {
		if _, msg := parseIP(st.HostIP); msg != "" {
			fe.add(status.child("hostIP"), msg)
		}
	}
	return fe
}
