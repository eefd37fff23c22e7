//! PERSISTENT RESERVE IN / OUT over [`parastor_core::PersistentReservations`].
//!
//! Initiators appear in READ FULL STATUS as 24-byte TransportIDs with
//! protocol identifier 0x0F ("no specific protocol") and the 16-byte
//! [`InitiatorId`] at offset 8; REGISTER AND MOVE accepts the same form.

use super::ScsiDisk;
use crate::data::{data_in, data_out};
use crate::result::{Res, illegal, invalid_cdb, invalid_param, param_len_error};
use alloc::vec::Vec;
use parastor_core::{
    DiskError, InitiatorId, PersistentReservations, ReservationNotice, ReservationReport,
    ReservationType,
};
use parastor_hw::scsi::{
    AdditionalSense, PrInAction, PrOutAction, PrOutParams, PrRegisterMoveParams, PrType, ProtocolId,
};
use zerocopy::FromBytes;

/// The SPC type code of `kind`.
pub(super) fn type_code(kind: ReservationType) -> PrType {
    match kind {
        ReservationType::WriteExclusive => PrType::WRITE_EXCLUSIVE,
        ReservationType::ExclusiveAccess => PrType::EXCLUSIVE_ACCESS,
        ReservationType::WriteExclusiveRegistrantsOnly => PrType::WRITE_EXCLUSIVE_RO,
        ReservationType::ExclusiveAccessRegistrantsOnly => PrType::EXCLUSIVE_ACCESS_RO,
        ReservationType::WriteExclusiveAllRegistrants => PrType::WRITE_EXCLUSIVE_AR,
        ReservationType::ExclusiveAccessAllRegistrants => PrType::EXCLUSIVE_ACCESS_AR,
    }
}

/// The reservation type of SPC type code `code`.
pub(super) fn from_type_code(code: PrType) -> Option<ReservationType> {
    ReservationType::ALL
        .into_iter()
        .find(|&k| type_code(k) == code)
}

/// Length of the TransportIDs used here.
const TRANSPORT_ID_LEN: usize = 24;

/// The TransportID that names `initiator`.
fn transport_id(initiator: InitiatorId) -> [u8; TRANSPORT_ID_LEN] {
    let mut t = [0u8; TRANSPORT_ID_LEN];
    t[0] = ProtocolId::NONE.get();
    t[8..24].copy_from_slice(&initiator.to_bytes());
    t
}

fn push_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}

fn read_keys(r: &ReservationReport) -> Vec<u8> {
    let mut v = Vec::new();
    push_u32(&mut v, r.generation);
    push_u32(&mut v, (r.registrants.len() * 8) as u32);
    for reg in &r.registrants {
        v.extend_from_slice(&reg.key.to_be_bytes());
    }
    v
}

fn read_reservation(r: &ReservationReport) -> Vec<u8> {
    let mut v = Vec::new();
    push_u32(&mut v, r.generation);
    match (r.reservation, r.reservation_key()) {
        (Some(kind), Some(key)) => {
            push_u32(&mut v, 16);
            v.extend_from_slice(&key.to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, 0, 0, type_code(kind).get(), 0, 0]);
        }
        _ => push_u32(&mut v, 0),
    }
    v
}

fn read_full_status(r: &ReservationReport) -> Vec<u8> {
    let mut body = Vec::new();
    for reg in &r.registrants {
        body.extend_from_slice(&reg.key.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.push(u8::from(reg.holds_reservation));
        let kind = match r.reservation {
            Some(k) if reg.holds_reservation => type_code(k).get(),
            _ => 0,
        };
        body.push(kind);
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&[0, 1]);
        push_u32(&mut body, TRANSPORT_ID_LEN as u32);
        body.extend_from_slice(&transport_id(reg.initiator));
    }
    let mut v = Vec::new();
    push_u32(&mut v, r.generation);
    push_u32(&mut v, body.len() as u32);
    v.extend_from_slice(&body);
    v
}

impl ScsiDisk {
    /// The disk's persistent reservations; INVALID COMMAND OPERATION CODE
    /// for a disk without them.
    fn reservations(&self) -> Res<&dyn PersistentReservations> {
        Ok(self
            .disk
            .persistent_reservations()
            .ok_or(DiskError::Unsupported("persistent reservations"))?)
    }

    pub(super) async fn pr_in(
        &self,
        data: &parastor_core::SgList<'_>,
        service_action: PrInAction,
        alloc_len: usize,
        _initiator: InitiatorId,
    ) -> Res {
        let prs = self.reservations()?;
        let out = match service_action {
            PrInAction::READ_KEYS => read_keys(&prs.report().await?),
            PrInAction::READ_RESERVATION => read_reservation(&prs.report().await?),
            PrInAction::REPORT_CAPABILITIES => {
                let caps = prs.capabilities();
                let ptpl_a = prs.report().await?.persist_through_power_loss;
                let mut mask = 0u16;
                for kind in ReservationType::ALL {
                    if caps.supports(kind) {
                        mask |= match kind {
                            ReservationType::WriteExclusiveAllRegistrants => 0x8000,
                            ReservationType::ExclusiveAccessRegistrantsOnly => 0x4000,
                            ReservationType::WriteExclusiveRegistrantsOnly => 0x2000,
                            ReservationType::ExclusiveAccess => 0x0800,
                            ReservationType::WriteExclusive => 0x0200,
                            ReservationType::ExclusiveAccessAllRegistrants => 0x0001,
                        };
                    }
                }
                let mut v = alloc::vec![
                    0,
                    8,
                    u8::from(caps.persist_through_power_loss),
                    0x80 | u8::from(ptpl_a),
                ];
                v.extend_from_slice(&mask.to_be_bytes());
                v.extend_from_slice(&[0, 0]);
                v
            }
            PrInAction::READ_FULL_STATUS => read_full_status(&prs.report().await?),
            _ => return Err(invalid_cdb()),
        };
        data_in(data, &out, alloc_len)
    }

    /// PERSISTENT RESERVE OUT, then queues the unit attentions it raised
    /// on other initiators (SPC-4 5.12.11) for their next commands.
    pub(super) async fn pr_out(
        &self,
        data: &parastor_core::SgList<'_>,
        service_action: PrOutAction,
        scope: u8,
        kind: PrType,
        param_len: u32,
        initiator: InitiatorId,
    ) -> Res {
        let result = self
            .pr_out_action(data, service_action, scope, kind, param_len, initiator)
            .await;
        if let Ok(prs) = self.reservations() {
            for (who, notice) in prs.take_notices() {
                let code = match notice {
                    ReservationNotice::ReservationsPreempted => {
                        AdditionalSense::RESERVATIONS_PREEMPTED
                    }
                    ReservationNotice::ReservationsReleased => {
                        AdditionalSense::RESERVATIONS_RELEASED
                    }
                    ReservationNotice::RegistrationsPreempted => {
                        AdditionalSense::REGISTRATIONS_PREEMPTED
                    }
                };
                self.attentions.raise(who, code);
            }
        }
        result
    }

    async fn pr_out_action(
        &self,
        data: &parastor_core::SgList<'_>,
        service_action: PrOutAction,
        scope: u8,
        kind: PrType,
        param_len: u32,
        initiator: InitiatorId,
    ) -> Res {
        let prs = self.reservations()?;
        let caps = prs.capabilities();
        let param_len = param_len as usize;
        if service_action == PrOutAction::REGISTER_AND_MOVE {
            const HEADER: usize = size_of::<PrRegisterMoveParams>();
            if param_len < HEADER || param_len > data.len() {
                return Err(param_len_error());
            }
            // Only the header and the one TransportID form accepted are
            // read: the list length is the guest's to choose.
            let mut buf = [0u8; HEADER + TRANSPORT_ID_LEN];
            let list = &mut buf[..param_len.min(HEADER + TRANSPORT_ID_LEN)];
            data_out(data, list)?;
            let (p, rest) =
                PrRegisterMoveParams::read_from_prefix(list).map_err(|_| param_len_error())?;
            if !caps.register_and_move || scope != 0 || from_type_code(kind).is_none() {
                return Err(invalid_cdb());
            }
            let tid_len = usize::try_from(p.transport_id_len.get()).unwrap_or(usize::MAX);
            if tid_len > param_len - HEADER {
                return Err(param_len_error());
            }
            let tid = rest
                .get(..TRANSPORT_ID_LEN)
                .filter(|_| tid_len >= TRANSPORT_ID_LEN)
                .ok_or_else(invalid_param)?;
            if ProtocolId::new(tid[0] & 0x0F) != ProtocolId::NONE {
                return Err(invalid_param());
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&tid[8..24]);
            let target = InitiatorId::new(u128::from_be_bytes(id));
            let aptpl = p.flags.aptpl();
            if aptpl && !caps.persist_through_power_loss {
                return Err(invalid_param());
            }
            prs.register_and_move(
                initiator,
                p.key.get(),
                p.sa_key.get(),
                target,
                p.flags.unreg(),
                aptpl,
            )
            .await?;
            return Ok(param_len);
        }
        if service_action > PrOutAction::REGISTER_AND_IGNORE {
            return Err(invalid_cdb());
        }
        if param_len != 24 {
            return Err(param_len_error());
        }
        let mut list = [0u8; 24];
        data_out(data, &mut list)?;
        let (p, _) = PrOutParams::read_from_prefix(&list).map_err(|_| param_len_error())?;
        let (key, sa_key) = (p.key.get(), p.sa_key.get());
        // APTPL counts for the registrations only (SPC-4: the other service
        // actions ignore it), and only where the disk can persist.
        let registering = matches!(
            service_action,
            PrOutAction::REGISTER | PrOutAction::REGISTER_AND_IGNORE
        );
        let aptpl = registering && p.flags.aptpl();
        // SPEC_I_PT and ALL_TG_PT are not supported (SIP_C = ATP_C = 0).
        if p.flags.spec_i_pt() || p.flags.all_tg_pt() || (aptpl && !caps.persist_through_power_loss)
        {
            return Err(invalid_param());
        }
        let kind = if matches!(
            service_action,
            PrOutAction::RESERVE
                | PrOutAction::RELEASE
                | PrOutAction::PREEMPT
                | PrOutAction::PREEMPT_AND_ABORT
        ) {
            if scope != 0 {
                return Err(invalid_cdb());
            }
            Some(
                from_type_code(kind)
                    .filter(|&k| caps.supports(k))
                    .ok_or_else(invalid_cdb)?,
            )
        } else {
            None
        };
        match (service_action, kind) {
            (PrOutAction::REGISTER, _) => {
                prs.register(initiator, Some(key), sa_key, Some(aptpl))
                    .await?
            }
            (PrOutAction::REGISTER_AND_IGNORE, _) => {
                prs.register(initiator, None, sa_key, Some(aptpl)).await?
            }
            (PrOutAction::RESERVE, Some(k)) => prs.reserve(initiator, key, k).await?,
            (PrOutAction::RELEASE, Some(k)) => match prs.release(initiator, key, k).await {
                Err(DiskError::InvalidInput(_)) => {
                    return Err(illegal(AdditionalSense::INVALID_RELEASE));
                }
                r => r?,
            },
            (PrOutAction::CLEAR, _) => prs.clear(initiator, key).await?,
            (PrOutAction::PREEMPT, Some(k)) => {
                prs.preempt(initiator, key, sa_key, k, false).await?
            }
            (PrOutAction::PREEMPT_AND_ABORT, Some(k)) => {
                prs.preempt(initiator, key, sa_key, k, true).await?
            }
            _ => return Err(invalid_cdb()),
        }
        Ok(24)
    }
}
