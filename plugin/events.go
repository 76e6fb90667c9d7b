package plugin

import (
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// startEvents watches libvirt's domain events. A reboot that no action of ours is doing (the
// domain's lock is free) is the guest's own, and the loop guard counts it: a guest that keeps
// rebooting itself is quarantined like one we keep restarting. It returns the stop function, or nil
// when there is nothing to watch.
func startEvents(cfg *Config, deps *Deps, log Logger) func() {
	if deps == nil || deps.Events == nil || !cfg.ActionsEnable {
		return nil
	}
	stop := deps.Events.Watch(func(e guest.Event) {
		dir, err := statedir.Open(cfg.StateDir)
		if err != nil {
			log.Warningf("libvirt event %s %s of %s not recorded: %v", e.Kind, e.Reason, e.Domain, err)
			return
		}
		now := statedir.SystemClock{}.Now()
		// the diagnosis before a repair reads what happened lately
		if err := dir.AddEvent(e.Domain, statedir.EventNote{At: now, Kind: e.Kind, Reason: e.Reason}); err != nil {
			log.Warningf("libvirt event %s of %s not recorded: %v", e.Kind, e.Domain, err)
		}
		if e.Kind != "reboot" {
			return
		}
		quarantined, err := dir.RecordGuestReboot(e.Domain, now, cfg.MaxRestartsPerHour)
		switch {
		case err != nil:
			log.Warningf("loop guard: %s rebooted by itself: %v", e.Domain, err)
		case quarantined:
			log.Warningf("loop guard: %s quarantined: %d restarts within an hour (its own reboots count)", e.Domain, cfg.MaxRestartsPerHour)
		}
	}, func() { log.Infof("libvirt events: subscribed again after the connection was lost") })
	log.Infof("libvirt events: watching %s", cfg.URI)
	return stop
}
