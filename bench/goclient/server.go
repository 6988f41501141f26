package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

// The comparison peer (-serve): a grpc-go server of GetEvents that streams the messages of a
// file (gRPC length-prefixed GetEventsResponse bytes, as -dump writes what Vigil sent) through
// a codec that passes bytes as they are, to one stream, then ends it OK and exits. -rate paces
// the messages as the bench's paced replay releases records (in 1 ms steps); 0: as fast as
// flow control lets them go.

type rawMsg struct{ b []byte }

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return v.(*rawMsg).b, nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	v.(*rawMsg).b = append([]byte(nil), data...)
	return nil
}
func (rawCodec) String() string { return "proto" }

func readMessages(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for off := 0; off < len(data); {
		if len(data)-off < 5 {
			return nil, fmt.Errorf("%s: truncated message prefix at byte %d", path, off)
		}
		n := int(binary.BigEndian.Uint32(data[off+1 : off+5]))
		off += 5
		if len(data)-off < n {
			return nil, fmt.Errorf("%s: truncated message at byte %d", path, off)
		}
		out = append(out, data[off:off+n])
		off += n
	}
	return out, nil
}

func serveMain(listen, messages string, rate float64) int {
	msgs, err := readMessages(messages)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Remove(listen)
	lis, err := net.Listen("unix", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.Remove(listen)
	done := make(chan struct{})
	srv := grpc.NewServer(grpc.CustomCodec(rawCodec{}))
	handler := func(_ interface{}, stream grpc.ServerStream) error {
		defer close(done)
		var req rawMsg
		if err := stream.RecvMsg(&req); err != nil {
			return err
		}
		t0 := time.Now()
		for i := range msgs {
			if rate > 0 {
				for {
					due := int(float64(time.Since(t0).Milliseconds()) * rate / 1000)
					if due > i {
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			if err := stream.SendMsg(&rawMsg{msgs[i]}); err != nil {
				return err
			}
		}
		return nil
	}
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "tetragon.FineGuidanceSensors",
		HandlerType: (*interface{})(nil),
		Streams:     []grpc.StreamDesc{{StreamName: "GetEvents", Handler: handler, ServerStreams: true}},
	}, nil)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case <-done:
		case <-sig:
		}
		srv.GracefulStop()
	}()
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
