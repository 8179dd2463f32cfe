//! The `swe_env.v1.EnvService` handlers: unwrap the request, call [`ServerState`], wrap the reply. Errors become
//! statuses through the one `From<ServiceError> for Status`.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert;
use super::error::ServiceError;
use super::proto;
use super::proto::env_service_server::EnvService;
use super::state::ServerState;

/// The service implementation (cheap to clone; shares the state).
#[derive(Clone)]
pub struct EnvServiceImpl {
    state: Arc<ServerState>,
}

impl EnvServiceImpl {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }

    /// Counts a call of `method` that failed (metrics `swe_env_rpc_errors_total`), and passes its result on.
    fn counted<T>(&self, method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.state.metrics.rpc_error(method, status.code());
        }
        result
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<proto::TrajectoryRecord, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<proto::RunEpisodeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl EnvService for EnvServiceImpl {
    async fn list_tasks(
        &self,
        request: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        let reply = self.state.list_tasks(request.get_ref());
        self.counted("ListTasks", reply.map(Response::new).map_err(Status::from))
    }

    async fn create_episode(
        &self,
        request: Request<proto::CreateEpisodeRequest>,
    ) -> Result<Response<proto::CreateEpisodeResponse>, Status> {
        let reply = self.state.create_episode(request.into_inner()).await;
        self.counted(
            "CreateEpisode",
            reply.map(Response::new).map_err(Status::from),
        )
    }

    async fn step(
        &self,
        request: Request<proto::StepRequest>,
    ) -> Result<Response<proto::StepResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!("step", episode_id = %request.episode_id);
        let reply = self.state.step(request).instrument(span).await;
        self.counted("Step", reply.map(Response::new).map_err(Status::from))
    }

    type GetTrajectoryStream = RecordStream;

    async fn get_trajectory(
        &self,
        request: Request<proto::GetTrajectoryRequest>,
    ) -> Result<Response<Self::GetTrajectoryStream>, Status> {
        let reply = self.get_trajectory_stream(request.into_inner()).await;
        self.counted("GetTrajectory", reply)
    }

    async fn grade(
        &self,
        request: Request<proto::GradeRequest>,
    ) -> Result<Response<proto::GradeResponse>, Status> {
        let outcome = self.state.grade(request.into_inner()).await;
        let reply = outcome.map(|outcome| Response::new(convert::grade_response(&outcome)));
        self.counted("Grade", reply.map_err(Status::from))
    }

    async fn check_test(
        &self,
        request: Request<proto::CheckTestRequest>,
    ) -> Result<Response<proto::CheckTestResponse>, Status> {
        let checked = self.state.check_test(request.into_inner()).await;
        let reply = checked.map(|checked| Response::new(convert::check_test_response(&checked)));
        self.counted("CheckTest", reply.map_err(Status::from))
    }

    async fn close_episode(
        &self,
        request: Request<proto::CloseEpisodeRequest>,
    ) -> Result<Response<proto::CloseEpisodeResponse>, Status> {
        let info = self.state.close_episode(request.into_inner()).await;
        let reply = info.map(|info| {
            Response::new(proto::CloseEpisodeResponse {
                episode: Some(info),
            })
        });
        self.counted("CloseEpisode", reply.map_err(Status::from))
    }

    async fn list_episodes(
        &self,
        request: Request<proto::ListEpisodesRequest>,
    ) -> Result<Response<proto::ListEpisodesResponse>, Status> {
        let reply = self.state.list_episodes(request.get_ref());
        self.counted(
            "ListEpisodes",
            reply.map(Response::new).map_err(Status::from),
        )
    }

    async fn get_submission(
        &self,
        request: Request<proto::GetSubmissionRequest>,
    ) -> Result<Response<proto::GetSubmissionResponse>, Status> {
        let reply = self.submission(request.into_inner().episode_id).await;
        self.counted("GetSubmission", reply)
    }

    async fn prewarm(
        &self,
        request: Request<proto::PrewarmRequest>,
    ) -> Result<Response<proto::PrewarmResponse>, Status> {
        let reply = self.state.prewarm(request.into_inner()).await;
        self.counted("Prewarm", reply.map(Response::new).map_err(Status::from))
    }

    async fn get_capacity(
        &self,
        _request: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::GetCapacityResponse>, Status> {
        Ok(Response::new(self.state.capacity()))
    }

    type RunEpisodeStream = EventStream;

    async fn run_episode(
        &self,
        request: Request<proto::RunEpisodeRequest>,
    ) -> Result<Response<Self::RunEpisodeStream>, Status> {
        let events = super::run::run_episode(self.state.clone(), request.into_inner()).await;
        let reply = events.map(|events| {
            Response::new(
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(events))
                    as Self::RunEpisodeStream,
            )
        });
        self.counted("RunEpisode", reply.map_err(Status::from))
    }
}

impl EnvServiceImpl {
    /// GetTrajectory's records.
    async fn get_trajectory_stream(
        &self,
        request: proto::GetTrajectoryRequest,
    ) -> Result<Response<RecordStream>, Status> {
        let typed = match proto::RecordEncoding::try_from(request.encoding) {
            Ok(proto::RecordEncoding::Typed) => true,
            Ok(proto::RecordEncoding::Json | proto::RecordEncoding::Unspecified) => false,
            Err(_) => {
                return Err(ServiceError::invalid(
                    "encoding",
                    format!("unknown value {}", request.encoding),
                )
                .into())
            }
        };
        let trajectory = self.state.trajectory(&request.episode_id).await?;
        let mut records = Vec::with_capacity(trajectory.steps.len() + 2);
        if let Some(start) = trajectory.start {
            records.push(crate::trajectory::Record::EpisodeStart(start));
        }
        records.extend(
            trajectory
                .steps
                .into_iter()
                .map(crate::trajectory::Record::Step),
        );
        if let Some(end) = trajectory.end {
            records.push(crate::trajectory::Record::EpisodeEnd(end));
        }
        let stream = tokio_stream::iter(
            records
                .into_iter()
                .map(move |record| Ok(convert::trajectory_record(&record, typed))),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    /// GetSubmission's reply.
    async fn submission(
        &self,
        episode_id: String,
    ) -> Result<Response<proto::GetSubmissionResponse>, Status> {
        convert::episode_id("episode_id", &episode_id)?;
        // A remembered episode answers from memory (the patch is shared, not copied); an episode the server no
        // longer remembers (or from a previous run) answers from its trajectory's `episode_end`.
        let submission = match self.state.registry.get(&episode_id) {
            Some(slot) => slot.summary().submission,
            None => self
                .state
                .trajectory(&episode_id)
                .await?
                .end
                .and_then(|end| end.submission)
                .map(|patch| super::registry::StoredSubmission::new(&patch)),
        };
        let reply = match submission {
            Some(stored) => proto::GetSubmissionResponse {
                submission_bytes: stored.patch.len() as u64,
                submission: stored.patch.to_string(),
                submission_sha256: stored.sha256,
            },
            None => proto::GetSubmissionResponse::default(),
        };
        Ok(Response::new(reply))
    }
}
