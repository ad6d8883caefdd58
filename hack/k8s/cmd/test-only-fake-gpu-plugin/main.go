// TEST-ONLY. A device plugin that advertises fake GPUs (`nvidia.com/gpu`) to the kubelet through the real
// device-plugin gRPC API (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1). There is no GPU on the machines
// that run our tests; with this plugin the kubelet itself counts, admits and allocates GPU requests, so a
// pod asking for more GPUs than the node has stays Pending exactly as on a real GPU node. Allocated
// containers see no device: only the environment variables an NVIDIA plugin would set, plus
// TRANSFERJOB_TEST_ONLY_FAKE_GPU=1 so that nothing can mistake them for real ones. Never deploy this.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the (static) device list once and then holds the stream open: the kubelet treats a
// closed stream as the plugin going away and zeroes the node's capacity.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{
				"NVIDIA_VISIBLE_DEVICES":         strings.Join(c.DevicesIds, ","),
				"TRANSFERJOB_TEST_ONLY_FAKE_GPU": "1",
			},
		})
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// serve listens on our socket in the kubelet's plugin folder and registers with the kubelet. It returns
// the server so that the caller can stop it when the kubelet restarts (the kubelet then wipes the folder).
func serve(p *plugin, dir, name, resource string) (*grpc.Server, error) {
	sock := filepath.Join(dir, name)
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	go func() { _ = srv.Serve(lis) }()

	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     name,
		ResourceName: resource,
	})
	if err != nil {
		srv.Stop()
		return nil, err
	}
	return srv, nil
}

func main() {
	count := flag.Int("devices", 2, "how many fake GPUs to advertise")
	resource := flag.String("resource", "nvidia.com/gpu", "the extended resource name")
	dir := flag.String("plugin-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin folder")
	flag.Parse()

	p := &plugin{}
	for i := 0; i < *count; i++ {
		p.devices = append(p.devices, &pluginapi.Device{ID: fmt.Sprintf("test-only-fake-gpu-%d", i), Health: pluginapi.Healthy})
	}
	name := "test-only-fake-gpu.sock"
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)

	var srv *grpc.Server
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			if srv != nil {
				srv.Stop()
			}
			_ = os.Remove(filepath.Join(*dir, name))
			return
		case <-tick.C:
		}
		// (Re-)register whenever our socket is gone: the kubelet removes every socket when it starts.
		if _, err := os.Stat(filepath.Join(*dir, name)); err == nil && srv != nil {
			continue
		}
		if srv != nil {
			srv.Stop()
			srv = nil
		}
		if _, err := os.Stat(filepath.Join(*dir, "kubelet.sock")); err != nil {
			continue
		}
		s, err := serve(p, *dir, name, *resource)
		if err != nil {
			log.Printf("register with the kubelet: %v (retrying)", err)
			continue
		}
		srv = s
		log.Printf("TEST-ONLY: advertising %d fake %s devices to the kubelet", *count, *resource)
	}
}
