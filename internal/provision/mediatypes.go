package provision

import "context"

var messageTemplates = []map[string]any{
	{"eventsource": 0, "recovery": 0, "subject": "Problem: {EVENT.NAME}",
		"message": "Problem started at {EVENT.TIME} on {EVENT.DATE}\nProblem name: {EVENT.NAME}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\nOperational data: {EVENT.OPDATA}\nEscalation step: {ESC.HISTORY}\nOriginal problem ID: {EVENT.ID}\n"},
	{"eventsource": 0, "recovery": 1, "subject": "Resolved in {EVENT.DURATION}: {EVENT.NAME}",
		"message": "Problem has been resolved at {EVENT.RECOVERY.TIME} on {EVENT.RECOVERY.DATE}\nProblem name: {EVENT.NAME}\nProblem duration: {EVENT.DURATION}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\nOriginal problem ID: {EVENT.ID}\n"},
	{"eventsource": 0, "recovery": 2, "subject": "Updated problem in {EVENT.AGE}: {EVENT.NAME}",
		"message": "{USER.FULLNAME} {EVENT.UPDATE.ACTION} problem at {EVENT.UPDATE.DATE} {EVENT.UPDATE.TIME}.\n{EVENT.UPDATE.MESSAGE}\n\nCurrent problem status is {EVENT.STATUS}, age is {EVENT.AGE}.\n"},
}

// mediaTypes keeps "KVM email" always, "KVM chat" only with a chat URL and "KVM SMS" only with an
// SMS script: a media type nobody configured would only produce failed alerts. Whether a media
// type is enabled, and its SMTP security and authentication, are the admin's after creation.
func (s *setup) mediaTypes(ctx context.Context) error {
	email := map[string]any{
		"name": EmailMediaType, "type": 0,
		"smtp_server": s.o.SMTPServer, "smtp_port": s.o.SMTPPort, "smtp_helo": s.o.SMTPHelo, "smtp_email": s.o.SMTPFrom,
		"description":       "KVM recovery ladder: email to the admins on call.",
		"message_templates": messageTemplates,
	}
	mts := []object{{name: EmailMediaType, desired: email,
		initial: map[string]any{"status": 0, "smtp_security": 0, "smtp_authentication": 0, "content_type": 0}}}
	if s.o.ChatURL != "" {
		chat := map[string]any{
			"name": ChatMediaType, "type": 4, "script": chatScript,
			"parameters": []map[string]any{
				{"name": "URL", "value": s.o.ChatURL},
				{"name": "To", "value": "{ALERT.SENDTO}"},
				{"name": "Subject", "value": "{ALERT.SUBJECT}"},
				{"name": "Message", "value": "{ALERT.MESSAGE}"},
			},
			"description":       "KVM recovery ladder: chat message through a webhook (POST of {\"text\",\"to\"} JSON to URL).",
			"message_templates": messageTemplates,
		}
		mts = append(mts, object{name: ChatMediaType, desired: chat, initial: map[string]any{"status": 0}})
	}
	if s.o.SMSScript != "" {
		sms := map[string]any{
			"name": SMSMediaType, "type": 1, "exec_path": s.o.SMSScript,
			"description":       "KVM recovery ladder: SMS through an alert script (phone, subject, message).",
			"message_templates": messageTemplates,
		}
		// 6.4 turned the script arguments from one newline-separated string into a list.
		if s.v64 {
			sms["parameters"] = []map[string]any{
				{"sortorder": 0, "value": "{ALERT.SENDTO}"},
				{"sortorder": 1, "value": "{ALERT.SUBJECT}"},
				{"sortorder": 2, "value": "{ALERT.MESSAGE}"},
			}
		} else {
			sms["exec_params"] = "{ALERT.SENDTO}\n{ALERT.SUBJECT}\n{ALERT.MESSAGE}\n"
		}
		mts = append(mts, object{name: SMSMediaType, desired: sms, initial: map[string]any{"status": 0}})
	}
	for _, m := range mts {
		m.kind, m.api, m.idField = "media type", "mediatype", "mediatypeid"
		m.get = map[string]any{"selectMessageTemplates": "extend"}
		if _, err := s.ensure(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

func (s *setup) chatConfigured() bool { return s.o.ChatURL != "" }

const chatScript = `var p = JSON.parse(value);
if (!p.URL) {
    throw 'KVM chat: the media type parameter URL is empty';
}
var req = new HttpRequest();
req.addHeader('Content-Type: application/json');
var resp = req.post(p.URL, JSON.stringify({text: p.Subject + '\n' + p.Message, to: p.To}));
if (req.getStatus() < 200 || req.getStatus() >= 300) {
    throw 'KVM chat: ' + p.URL + ' answered HTTP ' + req.getStatus() + ': ' + resp;
}
return 'OK';`
